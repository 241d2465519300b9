/** Batch tasks, checked by the compiler only (see events.ts): the handler's jobs and outcomes. */
import { type BatchOutcome, createApp, type Task } from '../../src/index.js';

type Crm = { tasks: { pushContact: { email: string } } };
const app = createApp<Crm>();

// Accepted: each job's args come from the declaration; outcomes per job, or nothing.
const push = app.task('pushContact', { batch: { size: 100, maxWait: { seconds: 2 } } }, async (jobs, ctx) => {
  jobs[0]?.args.email satisfies string | undefined;
  ctx.signal satisfies AbortSignal;
  return jobs.map(
    (job): BatchOutcome => (job.attempt > 1 ? { ok: true } : { ok: false, error: new Error('x') }),
  );
});
push satisfies Task<{ email: string }>;
await push.defer({ email: 'a@example.com' });
app.task('pushContact', { batch: { size: 10 } }, async () => {});

// Refused: a batch handler's first parameter is the jobs, not one job's args.
// @ts-expect-error email is not on the jobs array
app.task('pushContact', { batch: { size: 10 } }, async (jobs: { email: string }) => jobs);
// @ts-expect-error a batch task has no transaction option
app.task('pushContact', { batch: { size: 10 }, transaction: true }, async () => {});
// @ts-expect-error size is required
app.task('pushContact', { batch: { maxWait: 100 } }, async () => {});

// Untyped apps: the handler's annotation gives the args type.
const plain = createApp();
const bulk = plain.task(
  'bulk',
  { batch: { size: 5 } },
  async (jobs: { args: { n: number }; id: string }[]) => {
    jobs.map((job) => job.args.n);
  },
);
await bulk.defer({ n: 1 });
