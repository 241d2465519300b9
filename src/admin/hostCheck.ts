/**
 * The dashboard's Host header check, against DNS rebinding: a web page on evil.example
 * re-points its name at 127.0.0.1, and the operator's browser, same-origin with that
 * page, reads our API. The browser still sends `Host: evil.example`, so a server that
 * answers only the names it is reached by cannot be read that way.
 */
import { isIP } from 'node:net';
import { ValidationError } from '../errors.js';

/** Comma separated, like --allowed-host repeated: `dashboard.example.com,ops.internal:8080`. */
export const ALLOWED_HOSTS_ENV = 'OUTBATCH_DASHBOARD_ALLOWED_HOSTS';

export type HostVerdict = { allowed: true } | { allowed: false; error: string };

export interface HostCheck {
  check(hostHeader: string | undefined): HostVerdict;
  /** True when bound to every interface with no allow-list: any Host is answered (logged at start). */
  readonly acceptsAnyHost: boolean;
}

interface HostPort {
  name: string;
  port: number | undefined;
}

/** `name`, `name:port`, `[v6]` or `[v6]:port`, lower-cased; undefined when it is none of those. */
function parseHostPort(text: string): HostPort | undefined {
  const match = /^(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::(\d{1,5}))?$/i.exec(text.trim());
  if (!match) return undefined;
  const port = match[2] === undefined ? undefined : Number(match[2]);
  if (port !== undefined && port > 65_535) return undefined;
  const name = match[1]!.toLowerCase().replace(/\.$/, '');
  if (name.startsWith('[') && isIP(name.slice(1, -1)) !== 6) return undefined;
  return { name, port };
}

/** Checks allow-list entries (flag or environment): a bad one is a one-line error naming it. */
export function parseAllowedHosts(entries: string[], what = '--allowed-host'): string[] {
  return entries.flatMap((entry) =>
    entry
      .split(',')
      .map((part) => part.trim())
      .filter((part) => part !== '')
      .map((part) => {
        if (!parseHostPort(part)) {
          throw new ValidationError(
            `${what} ${JSON.stringify(part)} is invalid: expected a host name or address, optionally with :port, such as dashboard.example.com or [::1]:8080`,
          );
        }
        return part;
      }),
  );
}

/** The allow-list from OUTBATCH_DASHBOARD_ALLOWED_HOSTS (empty when unset). */
export function allowedHostsFromEnv(env: NodeJS.ProcessEnv = process.env): string[] {
  const text = env[ALLOWED_HOSTS_ENV];
  return text ? parseAllowedHosts([text], ALLOWED_HOSTS_ENV) : [];
}

const LOOPBACK_BINDS = new Set(['127.0.0.1', 'localhost', '::1', '[::1]']);
const WILDCARD_BINDS = new Set(['0.0.0.0', '::', '[::]', '']);

const bracketed = (host: string) => (isIP(host) === 6 ? `[${host}]` : host.toLowerCase());

/**
 * `bound` is the address given to listen(), `port` the one it got. Loopback binds answer
 * 127.0.0.1, localhost and [::1] on that port; any other address answers itself. A
 * wildcard bind (0.0.0.0, ::) also answers any IP literal, so Prometheus and probes that
 * use the pod's address keep working: rebinding always goes through a name, and a browser
 * sends an IP as Host only to a page served from that very IP. Allow-list entries without
 * a port match every port (a proxy or tunnel may present another one).
 */
export function makeHostCheck(options: { bound: string; port: number; allowed: string[] }): HostCheck {
  const { port } = options;
  const loopback = LOOPBACK_BINDS.has(options.bound.toLowerCase());
  const wildcard = WILDCARD_BINDS.has(options.bound);
  const own = loopback ? ['127.0.0.1', 'localhost', '[::1]'] : wildcard ? [] : [bracketed(options.bound)];
  const allowed = options.allowed.map((entry) => parseHostPort(entry)!);
  const acceptsAnyHost = wildcard && allowed.length === 0;
  const example = own[0] ?? 'localhost';

  return {
    acceptsAnyHost,
    check(hostHeader) {
      // Browsers always send Host; a client without one (HTTP/1.0 tools) is not a browser.
      if (hostHeader === undefined || acceptsAnyHost) return { allowed: true };
      const host = parseHostPort(hostHeader);
      if (host) {
        const hostPort = host.port ?? 80;
        if (own.includes(host.name) && hostPort === port) return { allowed: true };
        if (wildcard && isIP(host.name.replace(/^\[|\]$/g, '')) !== 0) return { allowed: true };
        if (allowed.some((a) => a.name === host.name && (a.port === undefined || a.port === hostPort))) {
          return { allowed: true };
        }
      }
      const shown = JSON.stringify(hostHeader.slice(0, 200));
      return {
        allowed: false,
        error: `host ${shown} is not allowed (DNS rebinding protection): open http://${example}:${port}, or allow that name with --allowed-host or ${ALLOWED_HOSTS_ENV}`,
      };
    },
  };
}
