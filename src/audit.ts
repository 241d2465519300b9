/** Who did an operator action (CLI, dashboard, script), for the audit log and the logs. */
import os from 'node:os';
import type { Queryable } from './db/queryable.js';

export interface Actor {
  actor: string;
  host: string;
}

export function currentActor(): Actor {
  let user = process.env.USER ?? 'unknown';
  try {
    user = os.userInfo().username;
  } catch {
    // no passwd entry (some containers): keep $USER
  }
  return { actor: user, host: os.hostname() };
}

export async function recordAudit(
  db: Queryable,
  q: string,
  by: Actor,
  action: string,
  subject: string,
  details: Record<string, unknown> = {},
): Promise<void> {
  await db.query(
    `INSERT INTO ${q}.audit_log (actor, host, action, subject, details) VALUES ($1, $2, $3, $4, $5)`,
    [by.actor, by.host, action, subject, JSON.stringify(details)],
  );
}
