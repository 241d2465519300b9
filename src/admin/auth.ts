/** The dashboard's action token: bearer header, compared in constant time, never logged. */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';

export type AuthResult = { allowed: true } | { allowed: false; status: 401 | 403; error: string };

const digest = (text: string) => createHash('sha256').update(text, 'utf8').digest();

/**
 * Hashing both sides first gives equal-length buffers, so `timingSafeEqual` applies and
 * the comparison time says nothing about the token's length or prefix.
 */
export function makeTokenCheck(token: string | undefined) {
  const expected = token ? digest(token) : undefined;
  return function checkAction(request: IncomingMessage): AuthResult {
    if (!expected) {
      return {
        allowed: false,
        status: 403,
        error:
          'actions are disabled: set OUTBATCH_DASHBOARD_TOKEN where the dashboard runs, then send it as "Authorization: Bearer <token>"',
      };
    }
    const header = request.headers.authorization ?? '';
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!match) {
      return {
        allowed: false,
        status: 401,
        error: 'this action needs the dashboard token: send "Authorization: Bearer <token>"',
      };
    }
    if (!timingSafeEqual(digest(match[1]!), expected)) {
      return { allowed: false, status: 403, error: 'the dashboard token is wrong' };
    }
    return { allowed: true };
  };
}
