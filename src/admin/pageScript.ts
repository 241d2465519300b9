/**
 * The page's script, shipped inline as text. Rules that keep it safe and small: every
 * node is built with `el()` (strings become text nodes, never HTML); the token lives in
 * sessionStorage and only travels as a bearer header; charts are SVG drawn here.
 * (Written without backticks or dollar-brace so it can sit in this template literal.)
 */
export const PAGE_SCRIPT = String.raw`
'use strict';
var TOKEN_KEY = 'outbatch-dashboard-token';
var SVG = 'http://www.w3.org/2000/svg';
var openStacks = new Set();
var browseBefore = null, browseNext = null;

function el(tag, attrs) {
  var node = document.createElement(tag);
  for (var k in attrs || {}) {
    if (k === 'class') node.className = attrs[k];
    else if (k.slice(0, 2) === 'on') node.addEventListener(k.slice(2), attrs[k]);
    else if (attrs[k] !== undefined && attrs[k] !== null) node.setAttribute(k, attrs[k]);
  }
  for (var i = 2; i < arguments.length; i++) append(node, arguments[i]);
  return node;
}
function append(node, child) {
  if (child === null || child === undefined || child === false) return;
  if (Array.isArray(child)) { child.forEach(function (c) { append(node, c); }); return; }
  node.appendChild(typeof child === 'object' ? child : document.createTextNode(String(child)));
}
function svg(tag, attrs) {
  var node = document.createElementNS(SVG, tag);
  for (var k in attrs) node.setAttribute(k, attrs[k]);
  for (var i = 2; i < arguments.length; i++) {
    var c = arguments[i];
    if (c !== null && c !== undefined) node.appendChild(typeof c === 'object' ? c : document.createTextNode(String(c)));
  }
  return node;
}
function fill(id, content) {
  var section = document.getElementById(id);
  var body = section.querySelector('.body') || section;
  body.replaceChildren();
  append(body, content);
}
function age(seconds) {
  if (seconds === null || seconds === undefined) return '-';
  var s = Math.max(0, Math.round(seconds));
  if (s < 60) return s + 's';
  if (s < 3600) return Math.floor(s / 60) + 'm' + String(s % 60).padStart(2, '0') + 's';
  if (s < 86400) return Math.floor(s / 3600) + 'h' + String(Math.floor((s % 3600) / 60)).padStart(2, '0') + 'm';
  return Math.floor(s / 86400) + 'd' + Math.floor((s % 86400) / 3600) + 'h';
}
function when(iso) { return iso ? String(iso).replace('T', ' ').slice(0, 19) + 'Z' : '-'; }
function since(iso) { return iso ? (Date.now() - Date.parse(iso)) / 1000 : null; }
function num(n) { return Number(n).toLocaleString('en-US'); }
function bytes(n) {
  var units = ['B', 'kB', 'MB', 'GB', 'TB'];
  var unit = 0;
  while (n >= 1024 && unit < units.length - 1) { n /= 1024; unit++; }
  return (unit === 0 ? n : n.toFixed(1)) + ' ' + units[unit];
}
function table(headers, rows, empty) {
  if (rows.length === 0) return el('div', { class: 'empty' }, empty);
  return el('table', null,
    el('thead', null, el('tr', null, headers.map(function (h) {
      return el('th', { class: /^[#~]|count|lag|age|attempts|running|concurrency|pid$/i.test(h) ? 'num' : '' }, h);
    }))),
    el('tbody', null, rows));
}
function pill(text, kind) { return el('span', { class: 'pill ' + (kind || text) }, text); }

function token() { return sessionStorage.getItem(TOKEN_KEY) || ''; }
function showToken() {
  var enabled = document.body.dataset.actionsEnabled === 'true';
  document.getElementById('token-state').textContent = !enabled
    ? 'actions disabled on this server (no OUTBATCH_DASHBOARD_TOKEN)'
    : token() ? 'token set for this tab' : 'no token: actions will be refused';
}
function flash(text, ok) {
  var f = document.getElementById('flash');
  f.textContent = text;
  f.className = 'show ' + (ok ? 'ok' : 'error');
}
async function getJson(path) {
  var headers = { accept: 'application/json' };
  // Reads need no token; with it the server also shows other sessions' query text.
  if (token()) headers.authorization = 'Bearer ' + token();
  var response = await fetch(path, { headers: headers });
  var body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}
async function act(path, label) {
  var headers = { accept: 'application/json' };
  if (token()) headers.authorization = 'Bearer ' + token();
  try {
    var response = await fetch(path, { method: 'POST', headers: headers });
    var body = await response.json();
    if (!response.ok) { flash('Refused: ' + label + ': ' + body.error, false); return; }
    if (body.skipped && body.skipped.length) flash(label + ': nothing done, ' + body.skipped[0].reason, false);
    else flash(label + ': done', true);
  } catch (error) {
    flash(label + ' failed: ' + error.message, false);
  }
  refresh();
}

function jobActions(job) {
  var id = encodeURIComponent(job.id);
  var buttons = [];
  var add = function (verb, label, confirmText) {
    buttons.push(el('button', { type: 'button', 'data-action': verb, onclick: function () {
      if (confirmText && !window.confirm(confirmText)) return;
      act('/api/jobs/' + id + '/' + verb, label + ' job ' + job.id);
    } }, label));
  };
  if (job.state === 'failed' || job.state === 'cancelled') add('retry', 'Retry');
  if (job.state === 'todo' || job.state === 'scheduled') add('cancel', 'Cancel');
  // A running job: its handler's signal is aborted, its transaction rolled back.
  if (job.state === 'doing' || job.state === 'dirty') add('cancel', 'Cancel', 'Cancel running job ' + job.id + '? Its handler is aborted and its transaction rolled back.');
  if (job.state !== 'doing' && job.state !== 'dirty') add('delete', 'Delete', 'Delete job ' + job.id + ' for good?');
  return buttons;
}
function progressOf(job) {
  if (job.progress === null || job.progress === undefined) return null;
  var pct = Math.round(job.progress * 10) / 10;
  return el('div', { class: 'progress', 'data-progress': String(pct) },
    el('progress', { max: '100', value: String(job.progress) }), ' ' + pct + '%' + (job.progress_message ? ' ' + job.progress_message : ''));
}
function stack(job) {
  if (!job.stack) return null;
  var d = el('details', { ontoggle: function () { d.open ? openStacks.add(job.id) : openStacks.delete(job.id); } },
    el('summary', null, 'stack'), el('pre', null, job.stack));
  if (openStacks.has(job.id)) d.open = true;
  return d;
}
function jobTable(jobs, empty) {
  return table(['#', 'task', 'queue', 'state', 'attempts', 'age', 'error', ''], jobs.map(function (job) {
    return el('tr', { 'data-job-id': job.id, class: job.state === 'failed' || job.state === 'dirty' ? 'bad' : '' },
      el('td', { class: 'num' }, job.id),
      el('td', null, job.task, job.caused_by ? el('div', { class: 'muted' }, 'caused by ' + job.caused_by) : null),
      el('td', null, job.queue),
      el('td', null, pill(job.state), progressOf(job)), el('td', { class: 'num' }, job.attempts + '/' + job.max_attempts),
      el('td', { class: 'num', title: when(job.created_at) }, age(job.age_seconds)),
      el('td', null, job.error ? el('div', { class: 'err' }, job.error) : el('span', { class: 'muted' }, job.worker_id || '-'), stack(job)),
      el('td', null, jobActions(job)));
  }), empty);
}

function tiles(o) {
  var sum = function (state) { return o.jobs.counts.filter(function (c) { return c.state === state; }).reduce(function (a, c) { return a + c.count; }, 0); };
  var est = function (state) { return o.jobs.counts.some(function (c) { return c.state === state && c.estimated; }) ? '~' : ''; };
  var alive = o.workers.filter(function (w) { return w.alive; }).length;
  var orphaned = o.withoutWorker.reduce(function (a, t) { return a + t.waiting; }, 0);
  var tx = o.oldestTransaction;
  var tile = function (k, v, kind) { return el('div', { class: 'tile ' + (kind || ''), 'data-tile': k }, el('div', { class: 'v' }, v), el('div', { class: 'k' }, k)); };
  return [
    tile('failed', est('failed') + num(sum('failed')), sum('failed') ? 'bad' : ''),
    tile('dirty', est('dirty') + num(sum('dirty')), sum('dirty') ? 'bad' : ''),
    tile('doing', est('doing') + num(sum('doing'))),
    tile('todo now', est('todo') + num(sum('todo')), sum('todo') > 1000 ? 'warn' : ''),
    tile('scheduled later', est('scheduled') + num(sum('scheduled'))),
    tile('workers alive', num(alive), alive ? '' : 'bad'),
    tile('jobs no worker knows', num(orphaned), orphaned ? 'bad' : ''),
    tile('processors failed', num(o.processors.filter(function (p) { return p.state === 'failed'; }).length),
      o.processors.some(function (p) { return p.state === 'failed'; }) ? 'bad' : ''),
    tile('late schedules', num(o.schedules.filter(function (s) { return s.late; }).length), o.schedules.some(function (s) { return s.late; }) ? 'bad' : ''),
    tile('oldest transaction', tx ? age(tx.age_seconds) : 'none', tx && tx.age_seconds > 300 ? 'bad' : ''),
    tile('event head', num(o.events.headPosition)),
    tile('event log', bytes(o.eventLog.bytes) + ' · ' + (o.eventLog.layout === 'partitioned'
      ? num(o.eventLog.partitions.length) + ' partitions'
      : 'unpartitioned'), o.eventLog.overflowEvents > 0 || o.eventLog.layout !== 'partitioned' ? 'warn' : ''),
    tile('archived through', o.eventLog.archivedThrough || 'nothing archived'),
  ];
}

function byState(o) {
  var states = ['failed', 'dirty', 'doing', 'todo', 'scheduled', 'cancelled'];
  var groups = new Map();
  o.jobs.counts.forEach(function (c) {
    var key = c.queue + '\u0000' + c.task;
    if (!groups.has(key)) groups.set(key, { queue: c.queue, task: c.task });
    groups.get(key)[c.state] = (c.estimated ? '~' : '') + num(c.count);
  });
  var batches = new Map();
  (o.batchTasks || []).forEach(function (b) { batches.set(b.task, b); });
  var rows = Array.from(groups.values()).map(function (g) {
    var batch = batches.get(g.task);
    // A batch task's jobs reach its handler many at a time: say how many, and the longest wait to fill.
    var task = batch
      ? el('td', null, g.task, ' ', el('span', { class: 'muted', 'data-batch': g.task }, 'batches of up to ' + num(batch.size) + ', waits up to ' + num(batch.maxWaitMs) + ' ms to fill'))
      : el('td', null, g.task);
    return el('tr', { class: g.failed || g.dirty ? 'bad' : '' }, el('td', null, g.queue), task,
      states.map(function (s) { return el('td', { class: 'num' }, g[s] || el('span', { class: 'muted' }, '0')); }));
  });
  return [table(['queue', 'task'].concat(states), rows, 'no jobs'),
    o.jobs.estimated ? el('div', { class: 'est' }, '~ estimated from table statistics (over 5 000 rows in that status)') : null];
}

function chart(minutes) {
  var W = 640, H = 96, L = 40, B = 16, n = Math.max(minutes.length, 1), bw = (W - L) / n;
  var total = function (m) { return m.succeeded + m.retried + m.failed; };
  var max = Math.max.apply(null, minutes.map(total).concat([1]));
  var bars = svg('svg', { viewBox: '0 0 ' + W + ' ' + (H + B), width: '100%', role: 'img', 'aria-label': 'jobs finished per minute' },
    svg('text', { x: 0, y: 10 }, num(max)), svg('text', { x: 0, y: H }, '0'),
    svg('line', { x1: L, y1: H, x2: W, y2: H, stroke: '#d0d5dd' }));
  minutes.forEach(function (m, i) {
    var y = H;
    [['succeeded', '#3a9d6a'], ['retried', '#e0a030'], ['failed', '#d1493f']].forEach(function (part) {
      var h = (m[part[0]] / max) * (H - 14);
      if (h <= 0) return;
      y -= h;
      bars.appendChild(svg('rect', { x: L + i * bw + 0.5, y: y, width: Math.max(bw - 1, 1), height: h, fill: part[1] },
        svg('title', {}, when(m.minute) + ' ' + part[0] + ': ' + m[part[0]])));
    });
  });
  bars.appendChild(svg('text', { x: L, y: H + 14 }, '-60 min'));
  bars.appendChild(svg('text', { x: W - 22, y: H + 14 }, 'now'));
  var points = [];
  var rate = svg('svg', { viewBox: '0 0 ' + W + ' ' + (H + B), width: '100%', role: 'img', 'aria-label': 'failure rate per minute' },
    svg('text', { x: 0, y: 10 }, '100%'), svg('text', { x: 0, y: H }, '0%'),
    svg('line', { x1: L, y1: H, x2: W, y2: H, stroke: '#d0d5dd' }),
    svg('line', { x1: L, y1: 6 + (H - 6) / 2, x2: W, y2: 6 + (H - 6) / 2, stroke: '#eef0f3' }));
  minutes.forEach(function (m, i) {
    var t = total(m);
    if (t === 0) return;
    var r = (m.retried + m.failed) / t;
    var x = L + i * bw + bw / 2, y = H - r * (H - 6);
    points.push(x.toFixed(1) + ',' + y.toFixed(1));
    rate.appendChild(svg('circle', { cx: x, cy: y, r: 2, fill: '#d1493f' }, svg('title', {}, when(m.minute) + ': ' + Math.round(r * 100) + '% of ' + t + ' failed or retried')));
  });
  if (points.length > 1) rate.insertBefore(svg('polyline', { points: points.join(' '), fill: 'none', stroke: '#d1493f', 'stroke-width': 1.5 }), rate.firstChild);
  rate.appendChild(svg('text', { x: L, y: H + 14 }, '-60 min'));
  rate.appendChild(svg('text', { x: W - 22, y: H + 14 }, 'now'));
  var sum = function (k) { return minutes.reduce(function (a, m) { return a + m[k]; }, 0); };
  return el('div', { class: 'charts' },
    el('div', null, el('div', { class: 'legend' }, el('span', null, el('i', { style: 'background:#3a9d6a' }), 'succeeded ' + num(sum('succeeded'))),
      el('span', null, el('i', { style: 'background:#e0a030' }), 'retried ' + num(sum('retried'))),
      el('span', null, el('i', { style: 'background:#d1493f' }), 'failed ' + num(sum('failed')))), bars),
    el('div', null, el('div', { class: 'legend' }, el('span', null, el('i', { style: 'background:#d1493f' }), 'failure rate (retried + failed) per minute')), rate));
}

function workers(o) {
  return table(['worker', 'host', 'pid', 'queues', 'concurrency', 'running', 'heartbeat age', ''], o.workers.map(function (w) {
    return el('tr', { class: w.alive ? '' : 'bad' }, el('td', null, el('code', { class: 'id' }, w.id)), el('td', null, w.host),
      el('td', { class: 'num' }, w.pid), el('td', null, w.queues ? w.queues.join(', ') : 'all'),
      el('td', { class: 'num' }, w.concurrency), el('td', { class: 'num' }, w.running),
      el('td', { class: 'num' }, age(w.heartbeat_age_seconds)), el('td', null, pill(w.alive ? 'alive' : 'silent', w.alive ? 'alive' : 'failed')));
  }), 'no workers registered');
}

function withoutWorker(o) {
  if (o.withoutWorker.length === 0) return el('div', { class: 'empty' }, 'every due job has a live worker that knows its task');
  return table(['task', 'jobs waiting'], o.withoutWorker.map(function (t) {
    return el('tr', { class: 'bad', 'data-task': t.task },
      el('td', null, 'no live worker knows task ', el('code', null, t.task)), el('td', { class: 'num' }, num(t.waiting)));
  }), '');
}

function transaction(o) {
  var tx = o.oldestTransaction;
  if (!tx) return el('div', { class: 'empty' }, 'no open transaction holds a transaction id: gap-safe reads are not held back');
  return table(['age', 'kind', 'pid', 'database', 'user', 'application', 'state', 'query'], [
    el('tr', { class: tx.age_seconds > 300 ? 'bad' : '' }, el('td', { class: 'num' }, age(tx.age_seconds)), el('td', null, tx.kind),
      el('td', { class: 'num' }, tx.pid === null ? '-' : tx.pid), el('td', null, tx.database || '-'), el('td', null, tx.user || '-'),
      el('td', null, tx.application || '-'), el('td', null, tx.state || '-'),
      el('td', null, tx.queryHidden ? el('span', { class: 'muted' }, 'hidden: enter the dashboard token to see it') : el('code', null, tx.query || '-')))], '');
}

// With readUrl the row is the replica's view: how far behind it is, and whether the version waits for it.
function replicaNote(r) {
  if (!r) return null;
  var text = r.waiting ? 'waits for replica' : 'replica';
  if (r.lagBytes > 0) text += ' ' + age(r.lagSeconds) + ' behind';
  if (r.replayPaused) text += ', replay paused';
  return el('div', { class: r.waiting || r.replayPaused ? 'err' : '' }, text);
}

function processors(o) {
  return table(['processor', 'version', 'state', 'checkpoint', 'head', 'lag events', 'lag age', 'last run', 'last error', ''], o.processors.map(function (p) {
    var name = encodeURIComponent(p.name);
    var action = p.state === 'paused'
      ? el('button', { type: 'button', onclick: function () { act('/api/processors/' + name + '/resume', 'Resume ' + p.name); } }, 'Resume')
      : p.state === 'retired' ? null
      : el('button', { type: 'button', onclick: function () { act('/api/processors/' + name + '/pause', 'Pause ' + p.name); } }, 'Pause');
    return el('tr', { class: p.state === 'failed' ? 'bad' : p.state === 'paused' ? 'warn' : '' },
      el('td', null, p.name), el('td', { class: 'num' }, p.version + (p.active ? ' (active)' : '')),
      el('td', null, pill(p.state), replicaNote(p.readReplica)), el('td', null, el('code', null, p.checkpoint)), el('td', { class: 'num' }, p.headPosition || '-'),
      el('td', { class: 'num' }, num(p.lagEvents)), el('td', { class: 'num' }, age(p.lagSeconds)), el('td', null, when(p.lastRunAt)),
      el('td', null, p.lastError ? el('div', { class: 'err' }, p.lastError.split('\n')[0]) : '-'), el('td', null, action));
  }), 'no processors yet (they appear once a worker with them in its code has started)');
}

// Queue limits (docs/limits.md). Changes take the token, as every action does; the values
// go as parameters: concurrency=3&groupConcurrency=1&rate=60/1h (none removes one).
function rateText(r) { return r ? r.max + ' per ' + age(r.perMs / 1000) : '-'; }
function setLimits(queue) {
  var spec = window.prompt('Limits of queue ' + queue + ', e.g. concurrency=3&groupConcurrency=1&rate=60/1h&groupRate=10/1m (none removes one)', '');
  if (spec) act('/api/queues/' + encodeURIComponent(queue) + '/limits?' + spec, 'Set limits of ' + queue);
}
function queueLimits(o) {
  var rows = o.queues.map(function (l) {
    var q = encodeURIComponent(l.queue);
    var paused = l.pausedUntil !== null;
    return el('tr', { class: paused || l.groupsPaused > 0 ? 'warn' : '' },
      el('td', null, l.queue), el('td', { class: 'num' }, l.concurrency === null ? '-' : l.concurrency),
      el('td', { class: 'num' }, l.groupConcurrency === null ? '-' : l.groupConcurrency),
      el('td', null, rateText(l.rate)), el('td', null, rateText(l.groupRate)),
      el('td', { class: 'num' }, num(l.running)), el('td', { class: 'num' }, num(l.waiting)),
      el('td', null, (paused ? when(l.pausedUntil) : '-') + (l.groupsPaused > 0 ? ' (+' + l.groupsPaused + ' groups)' : '')),
      el('td', null,
        el('button', { type: 'button', onclick: function () { setLimits(l.queue); } }, 'Set'),
        paused || l.groupsPaused > 0
          ? el('button', { type: 'button', onclick: function () { act('/api/queues/' + q + '/resume', 'Resume ' + l.queue); } }, 'Resume')
          : el('button', { type: 'button', onclick: function () { act('/api/queues/' + q + '/pause?for=1h', 'Pause ' + l.queue + ' for an hour'); } }, 'Pause 1h'),
        el('button', { type: 'button', onclick: function () {
          if (window.confirm('Remove every limit and pause of queue ' + l.queue + '?')) act('/api/queues/' + q + '/clear', 'Clear ' + l.queue);
        } }, 'Clear')));
  });
  var add = el('button', { type: 'button', onclick: function () {
    var queue = window.prompt('Queue to limit', '');
    if (queue) setLimits(queue.trim());
  } }, 'Limit a queue…');
  return [table(['queue', 'concurrency', 'per group', 'rate', 'per group rate', 'running', 'waiting', 'paused until', ''], rows,
    'no queue has limits: every queue is claimed without them'), add];
}

function schedules(o) {
  return table(['schedule', 'when', 'task', 'next tick', 'last tick', 'last outcome', 'lateness'], o.schedules.map(function (s) {
    return el('tr', { class: s.late ? 'late' : '' }, el('td', null, s.name, s.late ? [' ', pill('late')] : null, s.stale ? [' ', pill('stale', 'scheduled')] : null),
      el('td', null, el('code', null, s.expression), ' ', el('span', { class: 'muted' }, s.timezone)), el('td', null, s.task),
      el('td', null, when(s.nextTick)), el('td', null, when(s.lastTick)),
      el('td', null, s.lastOutcome ? pill(s.lastOutcome) : '-', s.lastJobId ? el('span', { class: 'muted' }, ' #' + s.lastJobId) : null),
      el('td', { class: 'num' }, age(s.latenessSeconds)));
  }), 'no schedules');
}

function browseQuery() {
  var p = new URLSearchParams({ state: document.getElementById('browse-state').value, limit: '25' });
  var queue = document.getElementById('browse-queue').value.trim(), task = document.getElementById('browse-task').value.trim();
  if (queue) p.set('queue', queue);
  if (task) p.set('task', task);
  if (browseBefore) p.set('before', browseBefore);
  return '/api/jobs?' + p.toString();
}

var refreshing = false;
async function refresh() {
  if (refreshing) return;
  refreshing = true;
  try {
    var results = await Promise.all([getJson('/api/overview'), getJson('/api/jobs?state=failed&limit=50'),
      getJson('/api/jobs?state=dirty&limit=50'), getJson(browseQuery()).catch(function (e) { return { error: e.message }; })]);
    var o = results[0];
    fill('tiles', tiles(o));
    fill('by-state', byState(o));
    fill('throughput', chart(o.throughput));
    fill('failed-jobs', jobTable(results[1].jobs, 'no failed jobs'));
    fill('dirty-jobs', jobTable(results[2].jobs, 'no dirty jobs: every running job has a live worker'));
    fill('workers', workers(o));
    fill('without-worker', withoutWorker(o));
    fill('transaction', transaction(o));
    fill('processors', processors(o));
    fill('queue-limits', queueLimits(o));
    fill('schedules', schedules(o));
    var b = results[3];
    browseNext = b.next || null;
    fill('browse', b.error ? el('div', { class: 'err' }, b.error) : jobTable(b.jobs, 'no jobs in this state'));
    document.getElementById('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
  } catch (error) {
    document.getElementById('updated').textContent = 'refresh failed: ' + error.message;
  } finally {
    refreshing = false;
  }
}

document.getElementById('save-token').addEventListener('click', function () {
  var input = document.getElementById('token');
  if (input.value) sessionStorage.setItem(TOKEN_KEY, input.value);
  input.value = '';
  showToken();
  refresh();
});
document.getElementById('forget-token').addEventListener('click', function () { sessionStorage.removeItem(TOKEN_KEY); showToken(); refresh(); });
document.getElementById('browse-go').addEventListener('click', function () { browseBefore = null; refresh(); });
document.getElementById('browse-newest').addEventListener('click', function () { browseBefore = null; refresh(); });
document.getElementById('browse-older').addEventListener('click', function () { if (browseNext) { browseBefore = browseNext; refresh(); } });
setInterval(function () { if (document.getElementById('auto').checked) refresh(); }, 5000);
showToken();
refresh();
`;
