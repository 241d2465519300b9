/**
 * The dashboard's HTTP server (node:http, no framework): the page, the JSON API,
 * /metrics and /healthz. Binds 127.0.0.1 unless told otherwise; answers only the Host
 * names it is reached by (hostCheck.ts); actions need the token.
 */
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { App } from '../app.js';
import type { Actor } from '../audit.js';
import { errorMessage, ValidationError } from '../errors.js';
import type { Logger } from '../log.js';
import { makeApi, type Query } from './api.js';
import { makeTokenCheck } from './auth.js';
import { allowedHostsFromEnv, type HostCheck, makeHostCheck, parseAllowedHosts } from './hostCheck.js';
import { type Metrics, makeMetrics } from './metrics.js';
import { renderPage } from './page.js';
import { makeReadPool } from './readPool.js';

export interface AdminServerOptions {
  app: App;
  /** Default 127.0.0.1: reachable from this machine only. */
  host?: string;
  /** Default 8080; 0 picks a free port. */
  port?: number;
  /** OUTBATCH_DASHBOARD_TOKEN; without one every action is refused. */
  token?: string;
  /**
   * Host names (optionally `name:port`) answered besides the bound address: the name a
   * proxy or DNS presents the dashboard under. Default: OUTBATCH_DASHBOARD_ALLOWED_HOSTS.
   */
  allowedHosts?: string[];
  log?: Logger;
  /** Share the worker's metrics (its job counters); built here when not given. */
  metrics?: Metrics;
}

export interface AdminServer {
  /** http://host:port */
  readonly url: string;
  readonly port: number;
  readonly metrics: Metrics;
  close(): Promise<void>;
}

class NotFound extends Error {}

interface Reply {
  status: number;
  body: unknown;
}

const json = (status: number, body: unknown): Reply => ({ status, body });

export async function startAdminServer(options: AdminServerOptions): Promise<AdminServer> {
  const { app } = options;
  const log = (options.log ?? app.log).child({ component: 'dashboard' });
  const readPool = makeReadPool(app, log);
  const api = makeApi(app, readPool.get);
  const metrics = options.metrics ?? makeMetrics({ snapshot: api.metricsSnapshot, log });
  const checkAction = makeTokenCheck(options.token);
  const allowedHosts = options.allowedHosts
    ? parseAllowedHosts(options.allowedHosts, 'allowedHosts')
    : allowedHostsFromEnv();
  // Set once listening (the port may be 0 until then); no request arrives before that.
  let hostCheck: HostCheck | undefined;
  const refusedHosts = new Set<string>();

  const noParams = (query: Query) => {
    const key = query.keys().next().value;
    if (key !== undefined) throw new ValidationError(`unknown parameter "${key}": this route takes none`);
  };

  /** Whether this request may see other sessions' query text: it carries the action token. */
  type Viewer = { trusted: boolean };
  const none = (read: (viewer: Viewer) => Promise<unknown>) => (query: Query, viewer: Viewer) => {
    noParams(query);
    return read(viewer);
  };
  const reads: Record<string, (query: Query, viewer: Viewer) => Promise<unknown>> = {
    '/api/overview': none(({ trusted }) => api.overview({ showQueries: trusted })),
    '/api/counts': none(api.counts),
    '/api/jobs': (query) => api.jobs(query),
    '/api/workers': none(api.workers),
    '/api/schedules': none(api.schedules),
    '/api/processors': none(api.processors),
    '/api/throughput': (query) => api.throughput(query),
    '/api/transactions/oldest': none(({ trusted }) => api.oldestTransaction({ showQueries: trusted })),
    '/api/tasks/without-worker': none(api.withoutWorker),
    '/api/tasks/batches': none(api.batchTasks),
    '/api/events/head': none(api.head),
    '/api/queues': none(api.queues),
  };

  async function route(request: http.IncomingMessage, url: URL): Promise<Reply> {
    const method = request.method ?? 'GET';
    const path = url.pathname;
    const read = reads[path];
    const jobRead = /^\/api\/jobs\/([^/]+)$/.exec(path);
    const jobAction = /^\/api\/jobs\/([^/]+)\/(retry|cancel|delete)$/.exec(path);
    const processorAction = /^\/api\/processors\/([^/]+)\/(pause|resume)$/.exec(path);
    const queueAction = /^\/api\/queues\/([^/]+)\/(limits|pause|resume|clear)$/.exec(path);
    if (read || jobRead) {
      if (method !== 'GET' && method !== 'HEAD') return json(405, { error: `${method} ${path}: use GET` });
      if (read) return json(200, await read(url.searchParams, { trusted: checkAction(request).allowed }));
      noParams(url.searchParams);
      const job = await api.job(decodeURIComponent(jobRead![1]!));
      return job ? json(200, { job }) : json(404, { error: `job ${jobRead![1]} not found` });
    }
    if (jobAction || processorAction || queueAction) {
      if (method !== 'POST') return json(405, { error: `${method} ${path}: use POST` });
      const auth = checkAction(request);
      if (!auth.allowed) {
        log.warn({ path, remote: request.socket.remoteAddress }, `action refused: ${auth.error}`);
        return json(auth.status, { error: auth.error });
      }
      const by = actorOf(request);
      if (queueAction) {
        // Limits and the pause's length come as parameters (the body is never read).
        const action = queueAction[2] as 'limits' | 'pause' | 'resume' | 'clear';
        return json(
          200,
          await api.queueAction(action, decodeURIComponent(queueAction[1]!), url.searchParams, by),
        );
      }
      noParams(url.searchParams);
      if (jobAction) {
        const action = jobAction[2] as 'retry' | 'cancel' | 'delete';
        return json(200, await api.jobAction(action, decodeURIComponent(jobAction[1]!), by));
      }
      const action = processorAction![2] as 'pause' | 'resume';
      return json(200, await api.processorAction(action, decodeURIComponent(processorAction![1]!), by));
    }
    throw new NotFound(`no route ${method} ${path}: see docs/operations.md for the API`);
  }

  async function handle(request: http.IncomingMessage, response: http.ServerResponse): Promise<void> {
    // The body is never read (actions take their arguments from the path): drain it.
    request.resume();
    const url = new URL(request.url ?? '/', 'http://localhost');
    const base = {
      'X-Content-Type-Options': 'nosniff',
      'Referrer-Policy': 'no-referrer',
      'X-Frame-Options': 'DENY',
      'Cache-Control': 'no-store',
    };
    // /healthz is exempt: it says nothing, and probes address pods by whatever name they like.
    const verdict =
      url.pathname === '/healthz' ? { allowed: true as const } : hostCheck!.check(request.headers.host);
    if (!verdict.allowed) {
      // Once per host: a rebinding page polls, and the log must not fill with it.
      if (refusedHosts.size < 100 && !refusedHosts.has(request.headers.host!)) {
        refusedHosts.add(request.headers.host!);
        log.warn(
          { path: url.pathname, remote: request.socket.remoteAddress },
          `request refused: ${verdict.error}`,
        );
      }
      return send(
        response,
        421,
        { ...base, 'Content-Type': 'application/json; charset=utf-8' },
        JSON.stringify({ error: verdict.error }),
      );
    }
    if (url.pathname === '/' || url.pathname === '/index.html') {
      if (request.method !== 'GET' && request.method !== 'HEAD') {
        return send(response, 405, { ...base, 'Content-Type': 'application/json' }, '{"error":"use GET"}');
      }
      const nonce = randomBytes(16).toString('base64');
      return send(
        response,
        200,
        {
          ...base,
          'Content-Type': 'text/html; charset=utf-8',
          // Defence in depth behind the escaping: only our own inline script runs.
          'Content-Security-Policy': `default-src 'none'; script-src 'nonce-${nonce}'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`,
        },
        renderPage({ nonce, schema: app.schema, actionsEnabled: Boolean(options.token) }),
      );
    }
    if (url.pathname === '/healthz') {
      // The process answers: that is liveness. Database trouble shows in the API and
      // metrics instead, so a database failover does not restart every pod.
      return send(response, 200, { ...base, 'Content-Type': 'application/json' }, '{"status":"ok"}');
    }
    if (url.pathname === '/metrics') {
      const text = await metrics.registry.metrics();
      return send(response, 200, { ...base, 'Content-Type': metrics.registry.contentType }, text);
    }
    let reply: Reply;
    try {
      reply = await route(request, url);
    } catch (error) {
      if (error instanceof NotFound) reply = json(404, { error: error.message });
      else if (error instanceof ValidationError) reply = json(400, { error: error.message });
      else {
        log.error({ err: error, path: url.pathname }, 'dashboard request failed');
        reply = json(500, { error: errorMessage(error) });
      }
    }
    send(
      response,
      reply.status,
      { ...base, 'Content-Type': 'application/json; charset=utf-8' },
      JSON.stringify(reply.body, (_key, value) => (typeof value === 'bigint' ? value.toString() : value)),
    );
  }

  const server = http.createServer((request, response) => {
    handle(request, response).catch((error) => {
      log.error({ err: error }, 'dashboard response failed');
      if (!response.headersSent) response.writeHead(500, { 'Content-Type': 'application/json' });
      response.end('{"error":"internal error"}');
    });
  });
  const host = options.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error) => {
      void readPool.close();
      reject(error);
    });
    server.listen(options.port ?? 8080, host, () => {
      server.off('error', reject);
      hostCheck = makeHostCheck({
        bound: host,
        port: (server.address() as AddressInfo).port,
        allowed: allowedHosts,
      });
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
  log.info({ url, actions: Boolean(options.token), allowedHosts }, `dashboard listening on ${url}`);
  if (hostCheck!.acceptsAnyHost) {
    // Chosen over refusing: behind a Service or proxy the name is not known here, and
    // refusing would break every existing 0.0.0.0 deployment at upgrade.
    log.warn(
      `dashboard bound to ${host} with no allowed hosts: Host checking accepts any host, so a web page using DNS rebinding can read job data through a browser that reaches this address; list the names it is served under with --allowed-host or OUTBATCH_DASHBOARD_ALLOWED_HOSTS`,
    );
  }
  return {
    url,
    port,
    metrics,
    async close() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await readPool.close();
    },
  };
}

function send(response: http.ServerResponse, status: number, headers: Record<string, string>, body: string) {
  response.writeHead(status, { ...headers, 'Content-Length': Buffer.byteLength(body) });
  response.end(response.req.method === 'HEAD' ? undefined : body);
}

/** Audited as "dashboard" from the peer address (and what a proxy says it forwarded, for the record). */
function actorOf(request: http.IncomingMessage): Actor {
  const forwarded = request.headers['x-forwarded-for'];
  const peer = request.socket.remoteAddress ?? 'unknown';
  const via = typeof forwarded === 'string' ? ` (x-forwarded-for ${forwarded.slice(0, 200)})` : '';
  return { actor: 'dashboard', host: `${peer}${via}` };
}
