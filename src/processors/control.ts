/** Operator controls on processors (CLI, dashboard, scripts), each audited. */
import type pg from 'pg';
import { type Actor, currentActor, recordAudit } from '../audit.js';
import type { Reads } from '../db/readReplica.js';
import { withTransaction } from '../db/transaction.js';
import { ValidationError } from '../errors.js';
import type { Logger } from '../log.js';
import { makeReplay, type ReplayOptions } from './replay.js';
import { withReplicaView } from './replicaStatus.js';
import { type ProcessorStatus, processorStatus } from './status.js';
import { resetFailed, setPaused, wakeProcessor } from './store.js';

export function makeProcessorControl(deps: {
  pool: () => Promise<pg.Pool>;
  /** Status reads there (a replica with readUrl); actions and their checks stay on the primary. */
  reads: () => Promise<Reads>;
  q: string;
  log: Logger;
}) {
  const known = async (name: string) => {
    const status = await processorStatus(await deps.pool(), deps.q, name);
    if (status.length === 0) {
      throw new ValidationError(
        `processor "${name}" is unknown: it appears once a worker with it in its code has started`,
      );
    }
    return status;
  };
  const act = async (
    name: string,
    action: string,
    change: (db: pg.PoolClient) => Promise<number>,
    by: Actor,
  ) => {
    await known(name);
    const changed = await withTransaction(await deps.pool(), async (tx) => {
      const count = await change(tx);
      await recordAudit(tx, deps.q, by, action, `processor:${name}`, { changed: count });
      return count;
    });
    deps.log.info({ processor: name, action, by: by.actor, host: by.host, changed }, `processor ${action}`);
    return { changed };
  };
  const wakeAfter = (db: pg.PoolClient, name: string) => async (changed: number) => {
    if (changed > 0) await wakeProcessor(db, deps.q, name);
    return changed;
  };
  const replays = makeReplay(deps);
  return {
    /** Rewind a version's checkpoint (or only report, with `dryRun`); workers then re-run it. */
    replay: (name: string, options: Omit<ReplayOptions, 'by'> & { by?: Actor }) =>
      replays.replay(name, { ...options, by: options.by ?? currentActor() }),
    /** Events still ahead of a version's checkpoint, up to `through` (for progress). */
    remaining: replays.remaining,
    /** Start a new version from the start beside the live one; `ctx.version` tells them apart. */
    rebuild: (name: string, options: { reason?: string; by?: Actor } = {}) =>
      replays.rebuild(name, { ...options, by: options.by ?? currentActor() }),
    /** Switch the active version once it has caught up (refused before); the old one stops. */
    promote: (name: string, version: number, options: { reason?: string; by?: Actor } = {}) =>
      replays.promote(name, version, { ...options, by: options.by ?? currentActor() }),
    /** Past rewinds, rebuilds and promotions, newest first. */
    history: replays.history,
    /** Every processor version, or one processor's versions; with readUrl, as the replica sees them. */
    async status(name?: string): Promise<ProcessorStatus[]> {
      const reads = await deps.reads();
      if (!reads.separate) return name === undefined ? processorStatus(reads.pool, deps.q) : known(name);
      const onReplica = await processorStatus(reads.pool, deps.q, name);
      // A processor the replica has not replayed yet: the primary's rows (or the one-line "unknown").
      const statuses = name !== undefined && onReplica.length === 0 ? await known(name) : onReplica;
      return withReplicaView(statuses, await deps.pool(), reads.pool, deps.q);
    },
    pause: (name: string, by = currentActor()) =>
      act(name, 'processors.pause', (db) => setPaused(db, deps.q, name, true), by),
    // Resuming and resetting also queue a run, so the processor catches up without waiting for a trigger.
    resume: (name: string, by = currentActor()) =>
      act(
        name,
        'processors.resume',
        (db) => setPaused(db, deps.q, name, false).then(wakeAfter(db, name)),
        by,
      ),
    resetFailed: (name: string, by = currentActor()) =>
      act(
        name,
        'processors.reset-failed',
        (db) => resetFailed(db, deps.q, name).then(wakeAfter(db, name)),
        by,
      ),
  };
}

export type ProcessorControl = ReturnType<typeof makeProcessorControl>;
