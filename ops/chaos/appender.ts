/**
 * An appender process: CHAOS_BATCHES transactions of CHAOS_BATCH_SIZE order events, each
 * written as two appends inside one caller transaction (BEGIN, append half, append half,
 * COMMIT), so a half-written batch would show as a batch with half its events.
 * A batch whose transaction got an error is not retried: it must be absent, or (if the
 * COMMIT reached the server but its answer did not come back) present in full.
 * Prints one JSON line: { appender, batches, batchSize, acked, errored: [batch numbers] }.
 */
import { createApp, createLogger } from '../../src/index.js';
import { envInt, sleep } from './support.js';

const index = envInt('CHAOS_APPENDER', 0);
const batches = envInt('CHAOS_BATCHES', 100);
const batchSize = envInt('CHAOS_BATCH_SIZE', 500);
const pauseMs = envInt('CHAOS_APPEND_PAUSE_MS', 0);
const customers = envInt('CHAOS_CUSTOMERS', 97);

const app = createApp({ logger: createLogger({ level: 'silent' }), pool: { max: 2 } });

function order(batch: number, i: number) {
  const n = batch * batchSize + i;
  const refund = (n * 7 + index) % 20 === 0;
  return {
    stream: `order-${index}-${n}`,
    type: refund ? 'OrderRefunded' : 'OrderPlaced',
    data: {
      orderId: `${index}-${n}`,
      customerId: `customer-${(n + index) % customers}`,
      amountCents: 100 + ((n * 31) % 9_900),
      batch: `${index}:${batch}`,
    },
  };
}

async function appendBatch(batch: number): Promise<void> {
  const { pool } = await app.database();
  const client = await pool.connect();
  let broken: Error | undefined;
  try {
    const events = Array.from({ length: batchSize }, (_, i) => order(batch, i));
    const half = Math.ceil(batchSize / 2);
    await client.query('BEGIN');
    await app.events.append(events.slice(0, half), { client });
    await app.events.append(events.slice(half), { client });
    await client.query('COMMIT');
  } catch (error) {
    broken = error as Error;
    await client.query('ROLLBACK').catch(() => {});
    throw error;
  } finally {
    client.release(broken); // a connection that failed is discarded, not reused
  }
}

const errored: number[] = [];
for (let batch = 0; batch < batches; batch++) {
  try {
    await appendBatch(batch);
  } catch {
    errored.push(batch);
    await sleep(200); // the server is restarting: do not spin
  }
  if (pauseMs > 0) await sleep(pauseMs);
}
await app.close();
console.log(
  JSON.stringify({ appender: index, batches, batchSize, acked: batches - errored.length, errored }),
);
