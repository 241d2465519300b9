/**
 * Recovery from the event log: rewind a processor version's checkpoint (and let the
 * workers re-run it), rebuild a new version beside the live one, promote it once it has
 * caught up. Each action is audited (who, from where, what, why) and logged.
 */
import type pg from 'pg';
import { type Actor, recordAudit } from '../audit.js';
import { withTransaction } from '../db/transaction.js';
import { OutbatchError, ValidationError } from '../errors.js';
import { checkArchivedHorizon } from '../events/archivedHorizon.js';
import { type Checkpoint, parseCheckpoint, START_CHECKPOINT } from '../events/checkpoint.js';
import { checkpointBefore, checkpointThrough, countByType, countRange, parsePoint } from '../events/range.js';
import type { Logger } from '../log.js';
import { processorLock } from './names.js';
import { processorStatus } from './status.js';
import { wakeProcessor } from './store.js';

export interface ReplayOptions {
  /** `start`, an event position, or an ISO time (the first event recorded at or after it). */
  from: string;
  /** A position (included) or an ISO time (events recorded before it); default: the head. */
  to?: string;
  /** The version to rewind (default: the active one). */
  version?: number;
  /** Report what would be replayed and change nothing. */
  dryRun?: boolean;
  /** Wait for a run in progress (default), or fail at once. */
  wait?: boolean;
  /** Called once if the replay has to wait for a run in progress. */
  onWait?: () => void;
  reason?: string;
  by: Actor;
}

export interface ReplayPlan {
  processor: string;
  version: number;
  /** The checkpoint before the rewind. */
  previous: Checkpoint;
  /** The checkpoint after it: processing restarts right after. */
  checkpoint: Checkpoint;
  /** Inclusive end of the range the caller asked for (undefined: the head). */
  through?: Checkpoint;
  events: number;
  byType: { type: string; count: number }[];
  applied: boolean;
}

interface VersionRow {
  version: number;
  checkpoint: string;
  types: string[] | null;
  stream_prefix: string | null;
}

export class ProcessorBusyError extends OutbatchError {
  constructor(name: string, version: number) {
    super(
      'OUTBATCH_PROCESSOR_BUSY',
      `processor "${name}" version ${version} is running a batch: try again, or leave out --no-wait to wait for it`,
    );
  }
}

function compare(a: Checkpoint, b: Checkpoint): number {
  const x = parseCheckpoint(a);
  const y = parseCheckpoint(b);
  if (x.txId !== y.txId) return x.txId < y.txId ? -1 : 1;
  return x.position === y.position ? 0 : x.position < y.position ? -1 : 1;
}

export function makeReplay(deps: { pool: () => Promise<pg.Pool>; q: string; log: Logger }) {
  const { q } = deps;

  async function version(db: pg.Pool, name: string, wanted?: number): Promise<VersionRow> {
    const { rows } = await db.query<VersionRow>(
      `SELECT version, checkpoint_tx::text || ':' || checkpoint_position::text AS checkpoint, types, stream_prefix
       FROM ${q}.processors
       WHERE name = $1 AND retired_at IS NULL AND (CASE WHEN $2::int IS NULL THEN active ELSE version = $2 END)`,
      [name, wanted ?? null],
    );
    if (!rows[0]) {
      throw new ValidationError(
        wanted === undefined
          ? `processor "${name}" is unknown: it appears once a worker with it in its code has started`
          : `processor "${name}" has no running version ${wanted}: see "outbatch processors status ${name}"`,
      );
    }
    return rows[0];
  }

  async function isRunning(db: pg.Pool, name: string, v: number): Promise<boolean> {
    const { rows } = await db.query<{ running: boolean }>(
      `SELECT EXISTS (SELECT 1 FROM ${q}.jobs WHERE lock = $1 AND status = 'doing') AS running`,
      [processorLock(name, v)],
    );
    return rows[0]!.running;
  }

  async function replay(name: string, options: ReplayOptions): Promise<ReplayPlan> {
    const db = await deps.pool();
    const from = parsePoint(options.from, '--from');
    const to = options.to === undefined ? undefined : parsePoint(options.to, '--to');
    const row = await version(db, name, options.version);
    const checkpoint = await checkpointBefore(db, q, from);
    if (checkpoint === undefined) {
      throw new ValidationError(
        `--from ${options.from} is past the head: no event was recorded at or after it`,
      );
    }
    // Refused up front, not left to the workers: a rewind below the archived horizon would
    // leave the processor failing on every run.
    await checkArchivedHorizon(db, q, checkpoint, `replaying processor "${name}" from ${options.from}`, name);
    const through = to === undefined ? undefined : await checkpointThrough(db, q, to);
    if (through !== undefined && compare(through, checkpoint) <= 0) {
      throw new ValidationError(`--to ${options.to} is not after --from ${options.from}: nothing to replay`);
    }
    const filter = { types: row.types ?? undefined, streamPrefix: row.stream_prefix ?? undefined };
    const byType = await countByType(db, q, { after: checkpoint, through, ...filter });
    const plan: ReplayPlan = {
      processor: name,
      version: row.version,
      previous: row.checkpoint,
      checkpoint,
      through,
      events: byType.reduce((sum, entry) => sum + entry.count, 0),
      byType,
      applied: false,
    };
    if (options.dryRun) return plan;
    // A page in flight that sees the moved checkpoint rolls back (saveCheckpoint), so the
    // rewind below is atomic with respect to pages anyway; waiting keeps a run from
    // finishing on the old range.
    for (let waited = false; await isRunning(db, name, row.version); waited = true) {
      if (options.wait === false) throw new ProcessorBusyError(name, row.version);
      if (!waited) options.onWait?.();
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    const parts = parseCheckpoint(checkpoint);
    await withTransaction(db, async (tx) => {
      await tx.query(
        `UPDATE ${q}.processors SET checkpoint_tx = $3::text::xid8, checkpoint_position = $4
         WHERE name = $1 AND version = $2`,
        [name, row.version, parts.txId.toString(), parts.position.toString()],
      );
      await recordAudit(tx, q, options.by, 'processors.replay', `processor:${name}`, {
        version: row.version,
        from: options.from,
        to: options.to ?? 'head',
        previous: row.checkpoint,
        checkpoint,
        through: through ?? null,
        events: plan.events,
        reason: options.reason ?? null,
      });
      await wakeProcessor(tx, q, name);
    });
    deps.log.info(
      {
        processor: name,
        version: row.version,
        previous: row.checkpoint,
        checkpoint,
        events: plan.events,
        by: options.by.actor,
        host: options.by.host,
        reason: options.reason,
      },
      `processor "${name}" rewound to ${checkpoint}`,
    );
    return { ...plan, applied: true };
  }

  /** Events of the range still ahead of the version's checkpoint, for a progress bar. */
  async function remaining(name: string, v: number, through?: Checkpoint): Promise<number> {
    const db = await deps.pool();
    const row = await version(db, name, v);
    return countRange(db, q, {
      after: row.checkpoint,
      through,
      types: row.types ?? undefined,
      streamPrefix: row.stream_prefix ?? undefined,
    });
  }

  /** A new version from the start, beside the live one (which keeps serving). */
  async function rebuild(
    name: string,
    options: { reason?: string; by: Actor },
  ): Promise<{ version: number }> {
    const db = await deps.pool();
    await version(db, name);
    await checkArchivedHorizon(db, q, START_CHECKPOINT, `rebuilding processor "${name}" from the start`);
    const created = await withTransaction(db, async (tx) => {
      const { rows } = await tx.query<{ version: number }>(
        `INSERT INTO ${q}.processors (name, version, active, types, stream_prefix)
         SELECT name, (SELECT max(version) + 1 FROM ${q}.processors WHERE name = $1), false, types, stream_prefix
         FROM ${q}.processors WHERE name = $1 AND active
         RETURNING version`,
        [name],
      );
      const v = rows[0]!.version;
      await recordAudit(tx, q, options.by, 'processors.rebuild', `processor:${name}`, {
        version: v,
        reason: options.reason ?? null,
      });
      await wakeProcessor(tx, q, name);
      return v;
    });
    deps.log.info(
      { processor: name, version: created, by: options.by.actor, host: options.by.host },
      `processor "${name}" rebuilding as version ${created}`,
    );
    return { version: created };
  }

  /** Makes `v` the active version once it has caught up; the old one stops (its data stays). */
  async function promote(name: string, v: number, options: { reason?: string; by: Actor }) {
    const db = await deps.pool();
    const status = (await processorStatus(db, q, name)).find((s) => s.version === v);
    if (!status || status.state === 'retired') {
      throw new ValidationError(
        `processor "${name}" has no running version ${v}: see "outbatch processors status ${name}"`,
      );
    }
    if (status.active)
      throw new ValidationError(`processor "${name}" version ${v} is already the active version`);
    if (status.lagEvents > 0) {
      throw new ValidationError(
        `processor "${name}" version ${v} has not caught up (${status.lagEvents} events behind): wait, and watch "outbatch processors status ${name}"`,
      );
    }
    const previous = await withTransaction(db, async (tx) => {
      const { rows } = await tx.query<{ version: number }>(
        `UPDATE ${q}.processors SET active = false, retired_at = now() WHERE name = $1 AND active RETURNING version`,
        [name],
      );
      await tx.query(`UPDATE ${q}.processors SET active = true WHERE name = $1 AND version = $2`, [name, v]);
      await recordAudit(tx, q, options.by, 'processors.promote', `processor:${name}`, {
        from: rows[0]?.version ?? null,
        to: v,
        reason: options.reason ?? null,
      });
      return rows[0]?.version ?? null;
    });
    deps.log.info(
      { processor: name, from: previous, to: v, by: options.by.actor, host: options.by.host },
      `processor "${name}" version ${v} promoted`,
    );
    return { previous, active: v };
  }

  async function history(name?: string) {
    const db = await deps.pool();
    const { rows } = await db.query<{
      at: Date;
      actor: string;
      host: string;
      action: string;
      subject: string;
      details: Record<string, unknown>;
    }>(
      `SELECT at, actor, host, action, subject, details FROM ${q}.audit_log
       WHERE action IN ('processors.replay', 'processors.rebuild', 'processors.promote')
         AND ($1::text IS NULL OR subject = 'processor:' || $1)
       ORDER BY at DESC, id DESC
       LIMIT 200`,
      [name ?? null],
    );
    return rows.map((row) => ({ ...row, processor: row.subject.replace(/^processor:/, '') }));
  }

  return { replay, remaining, rebuild, promote, history };
}
