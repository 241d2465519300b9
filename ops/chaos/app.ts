/**
 * The app the chaos worker processes run (`outbatch worker --app ops/chaos/app.ts`).
 * Every handler first records that it started (outside any transaction, so the row
 * survives a kill), waits a little like real work, then writes its effect to `results`:
 * `chaos-tx` through the job's transaction (commits iff the job completes),
 * `chaos-plain` straight through the pool (at-least-once: a kill after it re-runs the job).
 * With CHAOS_SHOP_SCHEMA set, the shop's revenue projection runs here too; with
 * CHAOS_EXPORT_DIR also its NDJSON export and customer digests (the soak).
 */
import { digestPipeline } from '../../pipelines/shop/digest.js';
import { exportProcessor } from '../../pipelines/shop/export.js';
import { REVENUE_OPTIONS, revenuePipeline } from '../../pipelines/shop/revenue.js';
import { createApp, createLogger } from '../../src/index.js';

const schema = process.env.OUTBATCH_SCHEMA;
if (!schema) throw new Error('OUTBATCH_SCHEMA must name the chaos schema');
const jobMs = Number(process.env.CHAOS_JOB_MS ?? 0);

export const app = createApp({
  schema,
  logger: createLogger({ level: process.env.LOG_LEVEL || 'warn' }),
  pool: { max: Number(process.env.CHAOS_POOL_MAX ?? 10) },
});

const work = () =>
  jobMs > 0 ? new Promise((resolve) => setTimeout(resolve, Math.random() * jobMs)) : undefined;

/** A handler's first step: one row per run, outside any transaction (survives a kill). */
export async function started(jobId: string, attempt: number): Promise<void> {
  const { pool } = await app.database();
  await pool.query(`INSERT INTO "${schema}".runs (job_id, pid, attempt) VALUES ($1, $2, $3)`, [
    jobId,
    process.pid,
    attempt,
  ]);
}

app.task('chaos-tx', {}, async (_args: unknown, ctx) => {
  await started(ctx.job.id, ctx.job.attempt);
  await work();
  const tx = await ctx.transaction();
  await tx.query(`INSERT INTO "${schema}".results (job_id, mode, pid) VALUES ($1, 'tx', $2)`, [
    ctx.job.id,
    process.pid,
  ]);
});

app.task('chaos-plain', {}, async (_args: unknown, ctx) => {
  await started(ctx.job.id, ctx.job.attempt);
  await work();
  const { pool } = await app.database();
  await pool.query(`INSERT INTO "${schema}".results (job_id, mode, pid) VALUES ($1, 'plain', $2)`, [
    ctx.job.id,
    process.pid,
  ]);
});

const shop = process.env.CHAOS_SHOP_SCHEMA;
if (shop) app.processor('revenue-by-customer-day', REVENUE_OPTIONS, revenuePipeline(shop));
const exportDir = process.env.CHAOS_EXPORT_DIR;
if (shop && exportDir) {
  exportProcessor(app, exportDir);
  digestPipeline(app, shop);
}
