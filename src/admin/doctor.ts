/** The checks behind `outbatch doctor`: connection, server version, migrations, xid8 support, tx id horizon, event log, clock skew. */
import type pg from 'pg';
import type { Clock } from '../clock.js';
import { migrationStatus } from '../db/migrate.js';
import { readServerVersion, type ServerVersion, serverVersionProblem } from '../db/serverVersion.js';
import { errorMessage } from '../errors.js';
import { eventLogStatus } from '../events/logStatus.js';
import { checkTxIdHorizon } from '../events/txIdHorizon.js';

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

export interface DoctorReport {
  ok: boolean;
  checks: Check[];
}

/** Clock skew past this makes ETAs and stall detection visibly wrong. */
const MAX_SKEW_MS = 2_000;

/** Everything an operator checks first; each check reports instead of throwing. */
export async function runDoctor(
  pool: pg.Pool,
  schema: string,
  clock: Clock,
  target: string,
): Promise<DoctorReport> {
  const checks: Check[] = [];
  const check = async (name: string, fn: () => Promise<{ ok: boolean; detail: string }>) => {
    try {
      checks.push({ name, ...(await fn()) });
    } catch (error) {
      checks.push({ name, ok: false, detail: errorMessage(error) });
    }
  };

  await check('connection', async () => ({ ok: true, detail: `connected to ${target}` }));
  let server: ServerVersion | undefined;
  await check('server version', async () => {
    server = await readServerVersion(pool);
    const problem = serverVersionProblem(server);
    return { ok: !problem, detail: problem ?? `PostgreSQL ${server.version}` };
  });
  await check('xid8 support', async () => {
    if (server && serverVersionProblem(server)) {
      return {
        ok: false,
        detail: `xid8 and pg_current_xact_id() arrived in PostgreSQL 13; found ${server.version}`,
      };
    }
    const { rows } = await pool.query<{ xid: string }>('SELECT pg_current_xact_id()::text AS xid');
    return { ok: true, detail: `pg_current_xact_id() = ${rows[0]!.xid}` };
  });
  await check('migrations', async () => {
    const status = await migrationStatus(pool, schema);
    const pending = status.pending.map((m) => `${m.version}_${m.name}`);
    return {
      ok: pending.length === 0,
      detail:
        pending.length === 0
          ? `schema "${schema}": ${status.applied.length} applied, none pending`
          : `schema "${schema}": ${status.applied.length} applied, pending: ${pending.join(', ')} (run "outbatch migrate")`,
    };
  });
  await check('tx id horizon', async () => {
    // The check reads stored_tx_ids (events, processor checkpoints, dead letters).
    const { rows } = await pool.query<{ exists: boolean }>('SELECT to_regclass($1) IS NOT NULL AS exists', [
      `"${schema}".stored_tx_ids`,
    ]);
    if (!rows[0]!.exists) return { ok: true, detail: 'no stored_tx_ids view yet (migration 010)' };
    // Throws TxIdHorizonError (after a logical restore), whose message says what to do.
    const horizon = await checkTxIdHorizon(pool, schema);
    return {
      ok: true,
      detail: `stored tx ids up to ${horizon.highestStored}, server at ${horizon.nextServer}`,
    };
  });
  await check('event log', async () => {
    const { rows } = await pool.query<{ exists: boolean }>('SELECT to_regclass($1) IS NOT NULL AS exists', [
      `"${schema}".event_log`,
    ]);
    if (!rows[0]!.exists) return { ok: true, detail: 'not partitioned (migration 029 pending)' };
    const log = await eventLogStatus(pool, schema);
    if (log.layout === 'unpartitioned') {
      return {
        ok: true,
        detail: `one unpartitioned table (~${log.estimatedEvents} events): convert it online with "outbatch events partition" (docs/event-log.md)`,
      };
    }
    const top = log.partitions.reduce((max, p) => (p.upper !== null && p.upper > max ? p.upper : max), 0n);
    const overflow =
      log.overflowEvents > 0
        ? `; ${log.overflowEvents} events in events_overflow (partitions fell behind once)`
        : '';
    // Appends landing in the default partition now: no worker has made partitions ahead.
    if (top <= log.reachedPosition) {
      return {
        ok: false,
        detail: `appends are past the last partition (position ${log.reachedPosition}, partitions end at ${top}) and land in events_overflow: run a worker, which makes partitions ahead${overflow}`,
      };
    }
    return {
      ok: true,
      detail: `${log.partitions.length} partitions, ready up to position ${top} (${log.reachedPosition} reached)${log.archivedThrough ? `, archived through ${log.archivedThrough}` : ''}${overflow}`,
    };
  });
  await check('clock skew', async () => {
    const before = clock.now().getTime();
    const { rows } = await pool.query<{ now: Date }>('SELECT clock_timestamp() AS now');
    const after = clock.now().getTime();
    const skew = rows[0]!.now.getTime() - (before + after) / 2;
    return {
      ok: Math.abs(skew) <= MAX_SKEW_MS,
      detail: `database clock is ${Math.round(skew)} ms ${skew >= 0 ? 'ahead of' : 'behind'} this machine${Math.abs(skew) > MAX_SKEW_MS ? ' (sync clocks with NTP)' : ''}`,
    };
  });
  return { ok: checks.every((c) => c.ok), checks };
}
