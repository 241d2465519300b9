/**
 * SVG line charts for the benchmarks' results, written by the bench itself (no charting
 * service, no library): series of (x, y) points on a log or linear x axis, a linear y axis
 * from 0, a legend, and the values as tooltips. Text is escaped; the output is a standalone
 * SVG file that GitHub renders inline in RESULTS.md.
 */

export interface Series {
  name: string;
  points: { x: number; y: number }[];
  /** Dashed, for a peer beside outbatch's solid lines. */
  dashed?: boolean;
}

export interface Chart {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  /** A log10 x axis (backlog sizes from 20k to 5M). */
  logX?: boolean;
  width?: number;
  height?: number;
}

const COLORS = ['#1f6feb', '#d1242f', '#1a7f37', '#9a6700', '#8250df', '#bf3989'];

export function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** 1234567 → "1.2M", 20000 → "20k". */
export function shortNumber(n: number): string {
  if (n >= 1e6) return `${Number((n / 1e6).toFixed(1))}M`;
  if (n >= 1e3) return `${Number((n / 1e3).toFixed(1))}k`;
  return `${Number(n.toFixed(1))}`;
}

/** A "nice" upper bound for the y axis and its step: 1, 2 or 5 times a power of ten. */
function niceScale(max: number): { top: number; step: number } {
  if (!(max > 0)) return { top: 1, step: 0.25 };
  const rough = max / 5;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough)!;
  return { top: Math.ceil(max / step) * step, step };
}

export function renderChart(chart: Chart): string {
  const width = chart.width ?? 720;
  const height = chart.height ?? 400;
  const margin = { left: 70, right: 190, top: 40, bottom: 50 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const points = chart.series.flatMap((s) => s.points);
  if (points.length === 0) throw new Error(`chart "${chart.title}" has no points`);
  const xs = [...new Set(points.map((p) => p.x))].sort((a, b) => a - b);
  const fx = chart.logX ? Math.log10 : (x: number) => x;
  const [x0, x1] = [fx(xs[0]!), fx(xs.at(-1)!)];
  const xAt = (x: number) => margin.left + (x1 === x0 ? plotW / 2 : ((fx(x) - x0) / (x1 - x0)) * plotW);
  const { top, step } = niceScale(Math.max(...points.map((p) => p.y)));
  const yAt = (y: number) => margin.top + plotH - (y / top) * plotH;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `<title>${escapeXml(chart.title)}</title>`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="${margin.left}" y="22" font-size="15" font-weight="bold">${escapeXml(chart.title)}</text>`,
  ];
  for (let y = 0; y <= top + step / 2; y += step) {
    out.push(
      `<line x1="${margin.left}" x2="${margin.left + plotW}" y1="${yAt(y)}" y2="${yAt(y)}" stroke="#d0d7de"/>`,
      `<text x="${margin.left - 8}" y="${yAt(y) + 4}" text-anchor="end" fill="#57606a">${shortNumber(y)}</text>`,
    );
  }
  for (const x of xs) {
    out.push(
      `<line x1="${xAt(x)}" x2="${xAt(x)}" y1="${margin.top}" y2="${margin.top + plotH}" stroke="#eaeef2"/>`,
      `<text x="${xAt(x)}" y="${margin.top + plotH + 18}" text-anchor="middle" fill="#57606a">${shortNumber(x)}</text>`,
    );
  }
  out.push(
    `<text x="${margin.left + plotW / 2}" y="${height - 10}" text-anchor="middle">${escapeXml(chart.xLabel)}</text>`,
    `<text transform="translate(16 ${margin.top + plotH / 2}) rotate(-90)" text-anchor="middle">${escapeXml(chart.yLabel)}</text>`,
  );
  for (const [i, series] of chart.series.entries()) {
    const color = COLORS[i % COLORS.length];
    const sorted = [...series.points].sort((a, b) => a.x - b.x);
    const dash = series.dashed ? ' stroke-dasharray="6 4"' : '';
    out.push(
      `<polyline fill="none" stroke="${color}" stroke-width="2"${dash} points="${sorted.map((p) => `${xAt(p.x).toFixed(1)},${yAt(p.y).toFixed(1)}`).join(' ')}"/>`,
    );
    for (const p of sorted) {
      out.push(
        `<circle cx="${xAt(p.x).toFixed(1)}" cy="${yAt(p.y).toFixed(1)}" r="3.5" fill="${color}"><title>${escapeXml(`${series.name}: ${shortNumber(p.y)} at ${shortNumber(p.x)}`)}</title></circle>`,
      );
    }
    const ly = margin.top + 10 + i * 20;
    const lx = margin.left + plotW + 16;
    out.push(
      `<line x1="${lx}" x2="${lx + 24}" y1="${ly}" y2="${ly}" stroke="${color}" stroke-width="2"${dash}/>`,
      `<text x="${lx + 30}" y="${ly + 4}">${escapeXml(series.name)}</text>`,
    );
  }
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
