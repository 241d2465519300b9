/**
 * A TCP proxy between outbatch and PostgreSQL that injects network faults at a chosen
 * protocol moment — the faults `SIGKILL` never produces: a statement the server ran whose
 * reply never came, a connection cut half-way through a reply, a reply that stalls, a
 * connection that goes silent without closing (half-open) — or at random under load.
 *
 * It reads the wire protocol only as far as message boundaries (a type byte and a length),
 * so every fault lands between two whole messages and the moment is known exactly: "the
 * server sent ReadyForQuery" means the statement finished, and committed if it ran outside
 * a transaction block. A client message matches a rule by its bytes as latin1 text: the
 * SQL of a simple query (`Q`) or a parse (`P`, with the statement's name), the statement
 * name of a bind (`B`), so `outbatch_claim` matches a prepared claim on every execution.
 */
import net from 'node:net';

export type FaultAction =
  /** The matching client message is not forwarded; both sides are closed. The server never acted. */
  | 'cut'
  /** Forwarded; every reply byte is dropped until the server says ReadyForQuery, then both sides are closed. The server acted; the client never learns it. */
  | 'lose-reply'
  /** Forwarded; the reply is passed on up to its first row (or command tag), then both sides are closed. */
  | 'cut-mid-reply'
  /** Forwarded; the reply is held back `stallMs`, then delivered. */
  | 'stall-reply'
  /** Forwarded; from then on nothing passes either way and neither side is closed. */
  | 'half-open';

export interface ClientMessage {
  /** The protocol message type: 'Q', 'P', 'B', 'E', 'S', 'd' (CopyData), 'c' (CopyDone)… */
  type: string;
  /** The message body as latin1 text (SQL and names are readable; binary parameters are noise). */
  text: string;
  connection: ConnectionInfo;
}

export interface ConnectionInfo {
  id: number;
  applicationName: string;
  user: string;
  database: string;
}

export interface FaultRule {
  /** A client message matches when its text includes this string, the RegExp matches, or the function says so. */
  match: string | RegExp | ((message: ClientMessage) => boolean);
  action: FaultAction;
  /** For 'stall-reply' (default 1 s). */
  stallMs?: number;
  /** How many matches fire the rule (default 1); then it is removed. */
  times?: number;
}

export interface ChaosOptions {
  /** A fault after every this many client messages on average (±50 %), across all connections. */
  everyMessages: number;
  /** The faults drawn from (default: cut, lose-reply, cut-mid-reply). */
  actions?: FaultAction[];
  /** Only connections this says yes to (default: all). */
  connections?: (connection: ConnectionInfo) => boolean;
}

export interface FaultProxy {
  /** The target URL with host and port replaced by the proxy's. */
  readonly url: string;
  readonly port: number;
  /** Arms a rule; `fired` resolves with the matching message the first time it fires. */
  addRule(rule: FaultRule): { fired: Promise<ClientMessage> };
  /** Random faults under load until `stopChaos()`. */
  chaos(options: ChaosOptions): void;
  stopChaos(): void;
  /** Open connections (after their startup message). */
  connections(): ConnectionInfo[];
  /** Closes the connections the filter selects (all by default). */
  cut(filter?: (connection: ConnectionInfo) => boolean): number;
  /** Silences the connections the filter selects without closing them. */
  halfOpen(filter?: (connection: ConnectionInfo) => boolean): number;
  /** Faults injected so far, by action. */
  readonly injected: Record<FaultAction, number>;
  close(): Promise<void>;
}

/** The whole message (type byte, length, body) starting at `offset`, once all of it has arrived. */
function typedMessage(buf: Buffer, offset: number): { type: string; whole: Buffer } | undefined {
  if (buf.length - offset < 5) return undefined;
  const length = buf.readInt32BE(offset + 1);
  if (buf.length - offset < 1 + length) return undefined;
  return { type: String.fromCharCode(buf[offset]!), whole: buf.subarray(offset, offset + 1 + length) };
}

const SSL_REQUEST = 80877103;
const GSSENC_REQUEST = 80877104;

interface Link {
  info: ConnectionInfo;
  client: net.Socket;
  server: net.Socket;
  started: boolean;
  /** The server answers an SSL or GSSENC request with one untyped byte. */
  serverOwesByte: boolean;
  mode: 'normal' | 'lose-reply' | 'cut-mid-reply' | 'stall' | 'half-open' | 'closed';
  held: Buffer[];
  clientBuf: Buffer;
  serverBuf: Buffer;
}

export async function startFaultProxy(targetUrl: string): Promise<FaultProxy> {
  const target = new URL(targetUrl);
  const targetHost = target.hostname || '127.0.0.1';
  const targetPort = Number(target.port || 5432);
  const links = new Set<Link>();
  const rules: {
    rule: FaultRule;
    left: number;
    resolve: (m: ClientMessage) => void;
    fired: Promise<ClientMessage>;
  }[] = [];
  const injected: Record<FaultAction, number> = {
    cut: 0,
    'lose-reply': 0,
    'cut-mid-reply': 0,
    'stall-reply': 0,
    'half-open': 0,
  };
  let chaos: (ChaosOptions & { countdown: number }) | undefined;
  let nextId = 1;

  const close = (link: Link) => {
    if (link.mode === 'closed') return;
    link.mode = 'closed';
    link.client.destroy();
    link.server.destroy();
    links.delete(link);
  };

  const apply = (link: Link, action: FaultAction, stallMs: number): boolean => {
    injected[action] += 1;
    switch (action) {
      case 'cut':
        close(link);
        return false;
      case 'lose-reply':
      case 'cut-mid-reply':
      case 'half-open':
        link.mode = action;
        return true;
      case 'stall-reply':
        link.mode = 'stall';
        setTimeout(() => {
          if (link.mode !== 'stall') return;
          link.mode = 'normal';
          for (const chunk of link.held.splice(0)) link.client.write(chunk);
        }, stallMs).unref();
        return true;
    }
  };

  /** Decides the fate of one client message: forward it (true) or not. */
  const onClientMessage = (link: Link, type: string, body: Buffer): boolean => {
    if (link.mode === 'half-open' || link.mode === 'closed') return false;
    if (link.mode !== 'normal') return true; // a fault is already under way on this connection
    const message: ClientMessage = { type, text: body.toString('latin1'), connection: link.info };
    for (const entry of rules) {
      const { match } = entry.rule;
      const hit =
        typeof match === 'string'
          ? message.text.includes(match)
          : match instanceof RegExp
            ? match.test(message.text)
            : match(message);
      if (!hit) continue;
      entry.left -= 1;
      if (entry.left <= 0) rules.splice(rules.indexOf(entry), 1);
      entry.resolve(message);
      return apply(link, entry.rule.action, entry.rule.stallMs ?? 1_000);
    }
    if (chaos && (chaos.connections?.(link.info) ?? true)) {
      chaos.countdown -= 1;
      if (chaos.countdown <= 0) {
        chaos.countdown = Math.max(1, Math.round(chaos.everyMessages * (0.5 + Math.random())));
        const actions = chaos.actions ?? ['cut', 'lose-reply', 'cut-mid-reply'];
        return apply(link, actions[Math.floor(Math.random() * actions.length)]!, 1_000);
      }
    }
    return true;
  };

  const onClientData = (link: Link, chunk: Buffer) => {
    link.clientBuf = link.clientBuf.length === 0 ? chunk : Buffer.concat([link.clientBuf, chunk]);
    const out: Buffer[] = [];
    let offset = 0;
    const buf = link.clientBuf;
    for (;;) {
      if (!link.started) {
        if (buf.length - offset < 8) break;
        const length = buf.readInt32BE(offset);
        if (buf.length - offset < length) break;
        const code = buf.readInt32BE(offset + 4);
        if (code === SSL_REQUEST || code === GSSENC_REQUEST) {
          link.serverOwesByte = true;
        } else {
          const params = buf
            .subarray(offset + 8, offset + length - 1)
            .toString('utf8')
            .split('\0');
          for (let i = 0; i + 1 < params.length; i += 2) {
            if (params[i] === 'application_name') link.info.applicationName = params[i + 1]!;
            if (params[i] === 'user') link.info.user = params[i + 1]!;
            if (params[i] === 'database') link.info.database = params[i + 1]!;
          }
          link.started = true;
        }
        out.push(buf.subarray(offset, offset + length));
        offset += length;
        continue;
      }
      const message = typedMessage(buf, offset);
      if (!message) break;
      const { type, whole } = message;
      offset += whole.length;
      if (!onClientMessage(link, type, whole.subarray(5))) {
        if (link.mode === 'closed') return;
        continue;
      }
      out.push(whole);
    }
    link.clientBuf = offset === buf.length ? Buffer.alloc(0) : Buffer.from(buf.subarray(offset));
    if (out.length > 0 && link.mode !== 'closed') link.server.write(Buffer.concat(out));
  };

  const onServerData = (link: Link, chunk: Buffer) => {
    link.serverBuf = link.serverBuf.length === 0 ? chunk : Buffer.concat([link.serverBuf, chunk]);
    const out: Buffer[] = [];
    let offset = 0;
    const buf = link.serverBuf;
    let cutAfter = false;
    for (;;) {
      if (link.serverOwesByte) {
        if (buf.length - offset < 1) break;
        out.push(buf.subarray(offset, offset + 1));
        offset += 1;
        link.serverOwesByte = false;
        continue;
      }
      const message = typedMessage(buf, offset);
      if (!message) break;
      const { type, whole } = message;
      offset += whole.length;
      if (link.mode === 'lose-reply') {
        if (type === 'Z') cutAfter = true; // the statement is over (and committed, outside a block)
        if (cutAfter) break;
        continue;
      }
      if (link.mode === 'half-open') continue;
      if (link.mode === 'stall') {
        link.held.push(whole);
        continue;
      }
      out.push(whole);
      if (link.mode === 'cut-mid-reply' && (type === 'D' || type === 'C' || type === 'Z')) {
        cutAfter = true;
        break;
      }
    }
    link.serverBuf = offset === buf.length ? Buffer.alloc(0) : Buffer.from(buf.subarray(offset));
    if (out.length > 0) link.client.write(Buffer.concat(out));
    if (cutAfter) {
      // Let the bytes already written leave before closing (cut-mid-reply delivers a partial reply).
      link.client.end(() => close(link));
      link.mode = 'half-open';
      setTimeout(() => close(link), 20).unref();
    }
  };

  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, targetHost);
    const link: Link = {
      info: { id: nextId++, applicationName: '', user: '', database: '' },
      client,
      server: upstream,
      started: false,
      serverOwesByte: false,
      mode: 'normal',
      held: [],
      clientBuf: Buffer.alloc(0),
      serverBuf: Buffer.alloc(0),
    };
    links.add(link);
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    client.on('data', (chunk) => onClientData(link, chunk));
    upstream.on('data', (chunk) => onServerData(link, chunk));
    for (const socket of [client, upstream]) {
      socket.on('error', () => close(link));
      socket.on('close', () => {
        // A half-open link stays open on the other side: that is the fault.
        if (link.mode !== 'half-open') close(link);
      });
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const port = (server.address() as net.AddressInfo).port;
  const url = new URL(targetUrl);
  url.hostname = '127.0.0.1';
  url.port = String(port);

  const select = (filter?: (connection: ConnectionInfo) => boolean) =>
    [...links].filter((link) => link.started && (filter?.(link.info) ?? true));

  return {
    url: url.toString(),
    port,
    injected,
    addRule(rule) {
      let resolve!: (m: ClientMessage) => void;
      const fired = new Promise<ClientMessage>((r) => {
        resolve = r;
      });
      rules.push({ rule, left: rule.times ?? 1, resolve, fired });
      return { fired };
    },
    chaos(options) {
      chaos = { ...options, countdown: options.everyMessages };
    },
    stopChaos() {
      chaos = undefined;
    },
    connections: () => select().map((link) => link.info),
    cut(filter) {
      const chosen = select(filter);
      for (const link of chosen) {
        injected.cut += 1;
        close(link);
      }
      return chosen.length;
    },
    halfOpen(filter) {
      const chosen = select(filter);
      for (const link of chosen) {
        injected['half-open'] += 1;
        link.mode = 'half-open';
      }
      return chosen.length;
    },
    async close() {
      chaos = undefined;
      for (const link of [...links]) {
        link.mode = 'normal';
        close(link);
      }
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
