/**
 * The benchmarks' SVG charts (ops/bench/chart.ts): one line per series at the right places on
 * a log x axis, names escaped, a clear error for a chart with nothing to draw.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { renderChart, shortNumber } from '../../ops/bench/chart.js';

describe('bench charts', () => {
  it('draws one line per series on a log x axis, from the first size at the left edge to the last at the right', () => {
    const svg = renderChart({
      title: 'Burn-down',
      xLabel: 'backlog',
      yLabel: 'jobs/s',
      logX: true,
      series: [
        {
          name: 'outbatch c=10',
          points: [
            { x: 20_000, y: 60_000 },
            { x: 200_000, y: 55_000 },
            { x: 2_000_000, y: 50_000 },
          ],
        },
        {
          name: 'peer c=10',
          dashed: true,
          points: [
            { x: 20_000, y: 20_000 },
            { x: 2_000_000, y: 25_000 },
          ],
        },
      ],
    });
    assert.ok(svg.startsWith('<svg '));
    assert.equal(svg.match(/<polyline /g)?.length, 2);
    assert.equal(svg.match(/stroke-dasharray/g)?.length, 2, 'the peer line and its legend are dashed');
    const xs = [...svg.matchAll(/<polyline [^>]*points="([^"]+)"/g)][0]![1]!
      .split(' ')
      .map((pair) => Number(pair.split(',')[0]));
    // log axis: 200k sits halfway between 20k and 2M
    assert.ok(Math.abs(xs[1]! - (xs[0]! + xs[2]!) / 2) < 0.2, `x positions ${xs.join(', ')}`);
    for (const label of ['20k', '200k', '2M']) assert.ok(svg.includes(`>${label}</text>`), label);
  });

  it('escapes names and titles, and refuses a chart without points in one line', () => {
    const svg = renderChart({
      title: '<script>alert(1)</script>',
      xLabel: 'x',
      yLabel: 'y',
      series: [{ name: 'a "b" & <c>', points: [{ x: 1, y: 1 }] }],
    });
    assert.ok(!svg.includes('<script>'));
    assert.ok(svg.includes('a &#34;b&#34; &#38; &#60;c&#62;'));
    assert.throws(
      () => renderChart({ title: 'empty', xLabel: 'x', yLabel: 'y', series: [{ name: 's', points: [] }] }),
      /^Error: chart "empty" has no points$/,
    );
    assert.equal(shortNumber(5_000_000), '5M');
    assert.equal(shortNumber(1_250_000), '1.3M');
  });
});
