/**
 * Retention policies (event_retention): which events an archive may take out of the
 * database. No policy = kept forever. An event's policy is the matching row with the
 * longest stream prefix, a row naming its type before one for any type. A policy only
 * allows: an archive also waits for every processor to pass the events (archive.ts).
 */
import type pg from 'pg';
import { type Actor, currentActor, recordAudit } from '../audit.js';
import { quoteSchema } from '../db/identifiers.js';
import { withTransaction } from '../db/transaction.js';
import { ValidationError } from '../errors.js';

export interface RetentionPolicy {
  /** '' matches every stream. */
  streamPrefix: string;
  /** '' matches every type. */
  type: string;
  /** Days an event is kept at least, or 'forever'. */
  keepDays: number | 'forever';
}

export interface RetentionKey {
  streamPrefix?: string;
  type?: string;
}

function checkKey(key: RetentionKey): { streamPrefix: string; type: string } {
  const streamPrefix = key.streamPrefix ?? '';
  const type = key.type ?? '';
  if (typeof streamPrefix !== 'string' || streamPrefix.length > 200) {
    throw new ValidationError(
      `streamPrefix ${JSON.stringify(streamPrefix)} is invalid: expected text of at most 200 characters ('' or left out: every stream)`,
    );
  }
  if (typeof type !== 'string' || type.length > 200) {
    throw new ValidationError(
      `type ${JSON.stringify(type)} is invalid: expected an event type of at most 200 characters ('' or left out: every type)`,
    );
  }
  return { streamPrefix, type };
}

export function parseKeepDays(value: unknown): number | 'forever' {
  if (value === 'forever') return value;
  const days = typeof value === 'string' && /^\d{1,6}$/.test(value) ? Number(value) : value;
  if (typeof days !== 'number' || !Number.isInteger(days) || days < 1 || days > 365_000) {
    throw new ValidationError(
      `keep days ${JSON.stringify(value)} is invalid: expected a whole number of days from 1 to 365000, or "forever"`,
    );
  }
  return days;
}

export function makeRetention(deps: { pool: () => Promise<pg.Pool>; schema: string }) {
  const q = quoteSchema(deps.schema);
  return {
    /** Sets (adds or replaces) the policy for a stream prefix and type. Audited. */
    async set(
      policy: Partial<RetentionPolicy> & { keepDays: number | 'forever'; by?: Actor },
    ): Promise<RetentionPolicy> {
      const key = checkKey(policy);
      const keepDays = parseKeepDays(policy.keepDays);
      await withTransaction(await deps.pool(), async (tx) => {
        await tx.query(
          `INSERT INTO ${q}.event_retention (stream_prefix, type, keep_days) VALUES ($1, $2, $3)
           ON CONFLICT (stream_prefix, type) DO UPDATE SET keep_days = excluded.keep_days`,
          [key.streamPrefix, key.type, keepDays === 'forever' ? null : keepDays],
        );
        await recordAudit(tx, q, policy.by ?? currentActor(), 'events.retention.set', 'events', {
          ...key,
          keepDays,
        });
      });
      return { ...key, keepDays };
    },
    /** Every policy, most specific first within a prefix. */
    async list(): Promise<RetentionPolicy[]> {
      const { rows } = await (await deps.pool()).query<{
        stream_prefix: string;
        type: string;
        keep_days: number | null;
      }>(`SELECT stream_prefix, type, keep_days FROM ${q}.event_retention ORDER BY stream_prefix, type`);
      return rows.map((row) => ({
        streamPrefix: row.stream_prefix,
        type: row.type,
        keepDays: row.keep_days ?? 'forever',
      }));
    },
    /** Removes one policy (its events fall back to a shorter prefix's, or forever). Audited. */
    async remove(key: RetentionKey & { by?: Actor }): Promise<void> {
      const checked = checkKey(key);
      await withTransaction(await deps.pool(), async (tx) => {
        const { rowCount } = await tx.query(
          `DELETE FROM ${q}.event_retention WHERE stream_prefix = $1 AND type = $2`,
          [checked.streamPrefix, checked.type],
        );
        if (!rowCount) {
          throw new ValidationError(
            `there is no retention policy for stream prefix ${JSON.stringify(checked.streamPrefix)} and type ${JSON.stringify(checked.type)}: see "outbatch events retention list"`,
          );
        }
        await recordAudit(tx, q, key.by ?? currentActor(), 'events.retention.remove', 'events', checked);
      });
    },
  };
}
