/**
 * The dashboard page: a static shell rendered here, filled in by a small inline script
 * over the JSON API (no build step, no framework). The script builds every value with
 * textContent, so nothing from the database is ever parsed as HTML; the shell escapes
 * the little it interpolates.
 */
import { PAGE_SCRIPT } from './pageScript.js';

const HTML_ESCAPES: Record<string, string> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  '"': '&quot;',
  "'": '&#39;',
};

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]!);
}

const STYLE = `
:root { --bg:#f6f7f9; --card:#fff; --ink:#1d2330; --muted:#667085; --line:#e4e7ec; --bad:#c0362c;
  --warn:#b26b00; --ok:#1f7a4d; --accent:#2f5bd3; --badbg:#fdecea; --warnbg:#fff4e0; }
* { box-sizing: border-box; }
body { margin:0; font:13px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; background:var(--bg); color:var(--ink); }
header { display:flex; flex-wrap:wrap; gap:12px; align-items:center; padding:10px 20px; background:#1d2330; color:#fff; }
header h1 { font-size:16px; margin:0 12px 0 0; }
header .meta { color:#c3c9d5; }
header .spacer { flex:1; }
header input { font:inherit; padding:3px 6px; border-radius:4px; border:1px solid #475067; background:#2a3142; color:#fff; width:180px; }
header button, main button { font:inherit; padding:3px 9px; border-radius:4px; border:1px solid var(--line); background:#fff; color:var(--ink); cursor:pointer; }
header button { background:#2a3142; color:#fff; border-color:#475067; }
main { padding:14px 20px 40px; display:grid; grid-template-columns:repeat(12,1fr); gap:14px; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 14px; grid-column:span 12; min-width:0; }
section.half { grid-column:span 6; }
@media (max-width:1100px) { section.half { grid-column:span 12; } }
h2 { font-size:13px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted); margin:0 0 8px; }
table { border-collapse:collapse; width:100%; }
th, td { text-align:left; padding:4px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { color:var(--muted); font-weight:600; font-size:12px; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
tr.late td, tr.bad td { background:var(--badbg); }
tr.warn td { background:var(--warnbg); }
.tiles { display:grid; grid-template-columns:repeat(auto-fit,minmax(112px,1fr)); gap:10px; }
.tile { border:1px solid var(--line); border-radius:8px; padding:8px 10px; background:#fff; }
.tile .v { font-size:22px; font-weight:650; font-variant-numeric:tabular-nums; }
.tile .k { color:var(--muted); font-size:12px; }
.tile.bad { border-color:var(--bad); background:var(--badbg); } .tile.bad .v { color:var(--bad); }
.tile.warn { border-color:var(--warn); background:var(--warnbg); } .tile.warn .v { color:var(--warn); }
.pill { display:inline-block; padding:0 7px; border-radius:9px; font-size:12px; background:#eef1f6; }
.pill.failed, .pill.dirty, .pill.late { background:var(--badbg); color:var(--bad); }
.pill.paused, .pill.scheduled { background:var(--warnbg); color:var(--warn); }
.pill.running, .pill.alive, .pill.done { background:#e6f4ec; color:var(--ok); }
.err { color:var(--bad); white-space:pre-wrap; overflow-wrap:anywhere; max-width:560px; }
details summary { cursor:pointer; color:var(--accent); font-size:12px; }
pre { margin:4px 0 0; padding:8px; background:#f2f4f7; border-radius:4px; max-height:220px; overflow:auto; font-size:11px; white-space:pre-wrap; word-break:break-word; }
.muted { color:var(--muted); }
.empty { color:var(--muted); padding:6px 0; }
.est { color:var(--muted); }
#flash { grid-column:span 12; padding:8px 12px; border-radius:6px; display:none; }
#flash.show { display:block; } #flash.error { background:var(--badbg); color:var(--bad); border:1px solid var(--bad); }
#flash.ok { background:#e6f4ec; color:var(--ok); border:1px solid var(--ok); }
.charts { display:grid; grid-template-columns:1fr; gap:10px; }
svg text { font:11px system-ui,sans-serif; fill:var(--muted); }
.legend span { margin-right:12px; font-size:12px; } .legend i { display:inline-block; width:10px; height:10px; border-radius:2px; margin-right:4px; vertical-align:-1px; }
.filters { display:flex; gap:8px; align-items:center; margin-bottom:8px; flex-wrap:wrap; }
.filters select, .filters input { font:inherit; padding:3px 6px; border:1px solid var(--line); border-radius:4px; }
code { font-size:12px; overflow-wrap:anywhere; }
td code.id, .pill { white-space:nowrap; }
`;

export function renderPage(options: { nonce: string; schema: string; actionsEnabled: boolean }): string {
  const schema = escapeHtml(options.schema);
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>outbatch · ${schema}</title>
<style>${STYLE}</style>
</head>
<body data-actions-enabled="${options.actionsEnabled ? 'true' : 'false'}">
<header>
  <h1>outbatch</h1>
  <span class="meta">schema <b>${schema}</b></span>
  <span class="meta" id="updated">loading…</span>
  <span class="spacer"></span>
  <label class="meta"><input type="checkbox" id="auto" checked style="width:auto"> auto-refresh 5 s</label>
  <input type="password" id="token" placeholder="dashboard token" autocomplete="off" aria-label="dashboard token">
  <button id="save-token" type="button">Use token</button>
  <button id="forget-token" type="button">Forget</button>
  <span class="meta" id="token-state"></span>
</header>
<main>
  <div id="flash" role="status"></div>
  <section><div class="tiles" id="tiles"></div></section>
  <section class="half" id="by-state"><h2>Jobs by state, queue and task</h2><div class="body"></div></section>
  <section class="half" id="throughput"><h2>Throughput and failure rate, last hour</h2><div class="body"></div></section>
  <section id="failed-jobs"><h2>Failed jobs (dead letter)</h2><div class="body"></div></section>
  <section id="dirty-jobs"><h2>Dirty jobs (worker stopped heartbeating)</h2><div class="body"></div></section>
  <section class="half" id="workers"><h2>Workers</h2><div class="body"></div></section>
  <section class="half" id="without-worker"><h2>Due jobs no live worker knows</h2><div class="body"></div></section>
  <section class="half" id="transaction"><h2>Oldest open transaction (holds back gap-safe reads)</h2><div class="body"></div></section>
  <section id="processors"><h2>Processors</h2><div class="body"></div></section>
  <section id="queue-limits"><h2>Queue limits and pauses</h2><div class="body"></div></section>
  <section id="schedules"><h2>Schedules</h2><div class="body"></div></section>
  <section id="browse"><h2>Browse jobs</h2>
    <div class="filters">
      <select id="browse-state" aria-label="state">
        <option>todo</option><option>scheduled</option><option>doing</option><option>dirty</option>
        <option>failed</option><option>cancelled</option><option>succeeded</option>
      </select>
      <input id="browse-queue" placeholder="queue" aria-label="queue">
      <input id="browse-task" placeholder="task" aria-label="task">
      <button id="browse-go" type="button">Show</button>
      <button id="browse-newest" type="button">Newest</button>
      <button id="browse-older" type="button">Older →</button>
    </div>
    <div class="body"></div>
  </section>
</main>
<script nonce="${escapeHtml(options.nonce)}">${PAGE_SCRIPT}</script>
</body>
</html>`;
}
