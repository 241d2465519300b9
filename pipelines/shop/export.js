/**
 * At-least-once export to an outside sink: NDJSON files rotated per hour. A file write
 * cannot join the page's transaction, so a crash between the write and the commit
 * replays the page. Each line carries its checkpoint, and events at or before the last
 * line already in a file are skipped: replaying a page writes nothing twice.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { eachInOrder, groupItemsBy } from '../../src/index.js';

function hourFile(folder, event) {
  return path.join(folder, `orders-${event.recordedAt.toISOString().slice(0, 13)}.ndjson`);
}
/** `"tx:position"` as a sortable pair (the readers' order). */
function order(checkpoint) {
  const [tx, position] = checkpoint.split(':');
  return [BigInt(tx), BigInt(position)];
}
function isAfter(a, b) {
  const [ta, pa] = order(a);
  const [tb, pb] = order(b);
  return ta !== tb ? ta > tb : pa > pb;
}
/** The checkpoint on the file's last line, reading only its tail. */
export async function lastExported(file) {
  let handle;
  try {
    handle = await fs.open(file, 'r');
  } catch {
    return undefined;
  }
  try {
    const { size } = await handle.stat();
    const length = Math.min(size, 64 * 1024);
    const buffer = Buffer.alloc(length);
    await handle.read(buffer, 0, length, size - length);
    const lines = buffer.toString('utf8').trimEnd().split('\n');
    const last = lines.at(-1);
    return last ? JSON.parse(last).checkpoint : undefined;
  } finally {
    await handle.close();
  }
}
export function exportProcessor(app, folder) {
  return app.processor(
    'orders-export',
    { types: ['OrderPlaced', 'OrderRefunded'], trigger: { every: { seconds: 10 } }, batchSize: 2000 },
    (events$) =>
      events$.pipe(
        groupItemsBy((event) => hourFile(folder, event)),
        // One file at a time, in order, so a file's lines stay in checkpoint order.
        eachInOrder(async ({ key: file, items }) => {
          await fs.mkdir(folder, { recursive: true });
          const last = await lastExported(file);
          const fresh = last ? items.filter((event) => isAfter(event.checkpoint, last)) : items;
          if (fresh.length === 0) return 0;
          const lines = fresh.map((event) =>
            JSON.stringify({
              checkpoint: event.checkpoint,
              position: event.position.toString(),
              type: event.type,
              stream: event.stream,
              recordedAt: event.recordedAt,
              data: event.data,
            }),
          );
          const handle = await fs.open(file, 'a');
          try {
            await handle.write(`${lines.join('\n')}\n`);
            await handle.sync(); // on disk before the checkpoint commits
          } finally {
            await handle.close();
          }
          return fresh.length;
        }),
      ),
  );
}
//# sourceMappingURL=export.js.map
