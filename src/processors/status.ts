/** What `processors list|status`, the dashboard and the metrics show about each processor version. */
import type { Queryable } from '../db/queryable.js';
import type { ReplicaView, ReplicaWait } from './replicaStatus.js';

export type ProcessorState = 'idle' | 'running' | 'paused' | 'failed' | 'retired';

export interface ProcessorStatus {
  name: string;
  version: number;
  active: boolean;
  state: ProcessorState;
  checkpoint: string;
  /** Newest event position in the log. */
  headPosition: string | null;
  /** Matching events after the checkpoint (counted up to `LAG_CAP`, then reported as the cap). */
  lagEvents: number;
  /** Age of the oldest matching event not yet processed; 0 when caught up. */
  lagSeconds: number;
  eventsProcessed: string;
  lastRunAt: Date | null;
  lastError: string | null;
  failedPosition: string | null;
  failingAttempts: number;
  deadLetters: number;
  /**
   * With `readUrl` only: the row above is as of the replica's replay point; this says how
   * far behind that is and whether the version waits for the replica (docs/replicas.md).
   */
  readReplica?: ReplicaView & (ReplicaWait | { primaryCheckpoint: null; waiting: false });
}

export const LAG_CAP = 1_000_000;

interface Row {
  name: string;
  version: number;
  active: boolean;
  paused: boolean;
  failed: boolean;
  retired: boolean;
  running: boolean;
  checkpoint: string;
  head_position: string | null;
  lag_events: string;
  lag_seconds: number | null;
  events_processed: string;
  last_run_at: Date | null;
  last_error: string | null;
  failed_position: string | null;
  failing_attempts: number;
  dead_letters: string;
}

export async function processorStatus(db: Queryable, q: string, name?: string): Promise<ProcessorStatus[]> {
  const { rows } = await db.query<Row>(
    `SELECT p.name, p.version, p.active, p.paused, p.failed_at IS NOT NULL AS failed, p.retired_at IS NOT NULL AS retired,
            EXISTS (SELECT 1 FROM ${q}.jobs j
                    WHERE j.lock = 'processor:' || p.name || '@' || p.version AND j.status = 'doing') AS running,
            p.checkpoint_tx::text || ':' || p.checkpoint_position::text AS checkpoint,
            (SELECT max(position)::text FROM ${q}.events) AS head_position,
            lag.n::text AS lag_events,
            extract(epoch FROM now() - oldest.recorded_at)::float8 AS lag_seconds,
            p.events_processed::text, p.last_run_at, p.last_error, p.failed_position::text, p.failing_attempts,
            (SELECT count(*) FROM ${q}.processor_dead_letters d WHERE d.processor = p.name AND d.version = p.version)::text
              AS dead_letters
     FROM ${q}.processors p
     LEFT JOIN LATERAL (
       SELECT count(*) AS n FROM (
         SELECT 1 FROM ${q}.events e
         WHERE (e.tx_id, e.position) > (p.checkpoint_tx, p.checkpoint_position)
           AND (p.types IS NULL OR e.type = ANY (p.types))
           AND (p.stream_prefix IS NULL OR starts_with(e.stream, p.stream_prefix))
         LIMIT ${LAG_CAP}
       ) capped
     ) lag ON true
     LEFT JOIN LATERAL (
       SELECT e.recorded_at FROM ${q}.events e
       WHERE (e.tx_id, e.position) > (p.checkpoint_tx, p.checkpoint_position)
         AND (p.types IS NULL OR e.type = ANY (p.types))
         AND (p.stream_prefix IS NULL OR starts_with(e.stream, p.stream_prefix))
       ORDER BY e.tx_id, e.position
       LIMIT 1
     ) oldest ON true
     WHERE $1::text IS NULL OR p.name = $1
     ORDER BY p.name, p.version`,
    [name ?? null],
  );
  return rows.map((row) => ({
    name: row.name,
    version: row.version,
    active: row.active,
    state: row.retired
      ? 'retired'
      : row.failed
        ? 'failed'
        : row.paused
          ? 'paused'
          : row.running
            ? 'running'
            : 'idle',
    checkpoint: row.checkpoint,
    headPosition: row.head_position,
    lagEvents: Number(row.lag_events),
    lagSeconds: Math.max(0, row.lag_seconds ?? 0),
    eventsProcessed: row.events_processed,
    lastRunAt: row.last_run_at,
    lastError: row.last_error,
    failedPosition: row.failed_position,
    failingAttempts: row.failing_attempts,
    deadLetters: Number(row.dead_letters),
  }));
}
