/** Progress for long CLI work: a redrawn bar on a terminal, a line every few seconds otherwise. */
import { shortDuration } from './format.js';

export function makeProgress(label: string, total: number, out: NodeJS.WriteStream = process.stderr) {
  const started = Date.now();
  const tty = Boolean(out.isTTY);
  let lastLine = 0;
  return {
    update(done: number) {
      const now = Date.now();
      if (!tty && now - lastLine < 5_000 && done < total) return;
      lastLine = now;
      const seconds = Math.max(0.001, (now - started) / 1000);
      const rate = done / seconds;
      const eta = rate > 0 ? (total - done) / rate : Number.POSITIVE_INFINITY;
      const width = 30;
      const filled = total === 0 ? width : Math.min(width, Math.round((done / total) * width));
      const bar = `[${'#'.repeat(filled)}${' '.repeat(width - filled)}]`;
      const text = `${label} ${bar} ${done}/${total} events, ${Math.round(rate)}/s, ETA ${Number.isFinite(eta) ? shortDuration(eta) : '?'}`;
      out.write(tty ? `\r${text}` : `${text}\n`);
    },
    finish() {
      if (tty) out.write('\n');
    },
  };
}
