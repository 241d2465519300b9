/**
 * Without OpenTelemetry nothing of it is loaded, and trace context still flows. A child
 * process runs a real worker with module hooks (test/fixtures/hide-otel.mjs) that see every
 * resolution and load of an @opentelemetry package: with the API unresolvable from
 * outbatch (an install without it; tracing 'auto') outbatch asks for it exactly once and
 * loads nothing; with tracing 'off' it never asks. Either way require's cache holds no
 * @opentelemetry module (the fixture imports src/app.ts: the package entry also brings
 * the dashboard's prom-client, which requires @opentelemetry/api itself; see docs/tracing.md).
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';
import { databaseUrl, ROOT, startProcess, uniqueSchema } from '../helpers.js';

const FIXTURE = path.join(ROOT, 'test', 'fixtures', 'trace-absent.ts');
const TRACEPARENT = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';

interface Report {
  messages: { resolve?: string; parent?: string; load?: string }[];
  required: string[];
  eventOrigin: unknown;
  parentId: string;
  childOrigin: unknown;
}

async function runFixture(mode: 'hidden' | 'off' | 'present'): Promise<Report> {
  const { result } = startProcess(process.execPath, ['--import', 'tsx', FIXTURE, mode], {
    env: { DATABASE_URL: databaseUrl(), OUTBATCH_SCHEMA: uniqueSchema(`trace_${mode}`) },
  });
  const { code, stdout, stderr } = await result;
  assert.equal(code, 0, stderr);
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as Report;
}

describe('without OpenTelemetry', () => {
  for (const mode of ['hidden', 'off'] as const) {
    it(`${mode === 'hidden' ? "not installed (tracing 'auto')" : "tracing 'off'"}: nothing loaded, trace context still recorded and passed on`, async () => {
      const report = await runFixture(mode);
      const asked = report.messages.filter((m) => m.resolve !== undefined);
      if (mode === 'hidden') {
        // Once, at start-up, from the one module that may ask.
        assert.equal(asked.length, 1, JSON.stringify(asked));
        assert.equal(asked[0]!.resolve, '@opentelemetry/api');
        assert.match(asked[0]!.parent ?? '', /\/src\/trace\/tracing\.ts$/);
      } else {
        assert.deepEqual(asked, []);
      }
      assert.deepEqual(
        report.messages.filter((m) => m.load !== undefined),
        [],
      );
      assert.deepEqual(report.required, []);
      assert.deepEqual(report.eventOrigin, { traceparent: TRACEPARENT });
      assert.deepEqual(report.childOrigin, { job: report.parentId, traceparent: TRACEPARENT });
    });
  }

  it('the control: installed, the hooks see it asked for once and loaded', async () => {
    const report = await runFixture('present');
    const asked = report.messages.filter((m) => m.resolve !== undefined);
    assert.equal(asked.length, 1, JSON.stringify(asked));
    assert.match(asked[0]!.parent ?? '', /\/src\/trace\/tracing\.ts$/);
    assert.ok(
      report.messages.some((m) => m.load?.includes('/@opentelemetry/api/')),
      JSON.stringify(report.messages),
    );
    // No SDK registered: no spans, the trace passed on as it came.
    assert.deepEqual(report.childOrigin, { job: report.parentId, traceparent: TRACEPARENT });
  });
});
