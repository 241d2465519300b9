/**
 * Runtime validation with Standard Schema validators: zod, valibot and hand-written ones,
 * synchronous and async. A failure is one line naming the event (or job) and the first
 * issue's path, and nothing is written: not the event, not the rest of its batch, not the job.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import * as v from 'valibot';
import { z } from 'zod';
import { createApp } from '../../src/app.js';
import { ValidationError } from '../../src/errors.js';
import type { StandardSchemaV1 } from '../../src/typing/standardSchema.js';
import { databaseUrl, isolatedApp, type TestApp } from '../helpers.js';

const orderPlaced = z.object({
  orderId: z.string(),
  total: z.number(),
  currency: z.string().default('EUR'),
  items: z.array(z.object({ price: z.number() })).optional(),
});

/** A validator written by hand against the spec, answering later (as one that calls a service would). */
const slowPositive: StandardSchemaV1<unknown, { n: number }> = {
  '~standard': {
    version: 1,
    vendor: 'by-hand',
    validate: async (value) => {
      await new Promise((resolve) => setTimeout(resolve, 5));
      const n = (value as { n?: unknown } | null)?.n;
      return typeof n === 'number' && n > 0
        ? { value: { n } }
        : { issues: [{ message: 'must be a positive number', path: [{ key: 'n' }] }] };
    },
  },
};

/** Synchronous, by hand, with a message over two lines. */
const upperCase: StandardSchemaV1<unknown, string> = {
  '~standard': {
    version: 1,
    vendor: 'by-hand',
    validate: (value) =>
      typeof value === 'string' && value === value.toUpperCase()
        ? { value }
        : { issues: [{ message: 'expected upper case\nfor example "ABC"' }] },
  },
};

type Shop = {
  events: {
    OrderPlaced: z.input<typeof orderPlaced>;
    Counted: { n: number };
    Code: string;
    Shipped: { carrier: string };
    Other: unknown;
  };
};

describe('event schemas', () => {
  let t: TestApp<Shop>;
  before(async () => {
    t = await isolatedApp<Shop>('typing_events', {
      events: {
        schemas: {
          OrderPlaced: orderPlaced,
          Counted: slowPositive,
          Code: upperCase,
          Shipped: v.object({ carrier: v.picklist(['ups', 'dhl']) }),
        },
      },
    });
  });
  after(async () => t.cleanup());

  const stored = async () =>
    Number((await t.pool.query(`SELECT count(*) FROM "${t.schema}".events`)).rows[0].count);

  /** `append` must fail with one line matching `message`, and leave the table as it was. */
  const refuses = async (append: () => Promise<unknown>, message: RegExp) => {
    const before = await stored();
    await assert.rejects(append(), (error: unknown) => {
      assert.ok(error instanceof ValidationError, `expected ValidationError, got ${error}`);
      assert.match(error.message, message);
      assert.ok(!error.message.includes('\n'), 'one line');
      return true;
    });
    assert.equal(await stored(), before, 'nothing written');
  };

  it('refuses bad data (zod) naming the type and the first issue path', async () => {
    await refuses(
      // @ts-expect-error the compiler refuses it too; this is what happens at runtime without types
      () => t.app.events.append({ stream: 'o-1', type: 'OrderPlaced', data: { orderId: 'o-1', total: '5' } }),
      /^event\.data\.total does not match the schema of "OrderPlaced": Invalid input: expected number, received string$/,
    );
    await refuses(
      () =>
        t.app.events.append({
          stream: 'o-1',
          type: 'OrderPlaced',
          data: { orderId: 'o-1', total: 5, items: [{ price: 1 }, { price: Number.NaN }] },
        }),
      /^event\.data\.items\[1\]\.price does not match the schema of "OrderPlaced": /,
    );
  });

  it('rejects the whole batch for one bad event, naming its index', async () => {
    const good = { stream: 'o-2', type: 'OrderPlaced' as const, data: { orderId: 'o-2', total: 5 } };
    await refuses(
      () => t.app.events.append([good, good, { stream: 'o-2', type: 'Counted', data: { n: -1 } }]),
      /^events\[2\]\.data\.n does not match the schema of "Counted": must be a positive number$/,
    );
    await refuses(
      () => t.app.events.append([good, { stream: 's', type: 'Shipped', data: { carrier: 'fedex' } }]),
      /^events\[1\]\.data\.carrier does not match the schema of "Shipped": Invalid type: /,
    );
  });

  it('refuses inside the caller transaction without sending anything', async () => {
    const client = await t.pool.connect();
    try {
      await client.query('BEGIN');
      await assert.rejects(
        t.app.events.append({ stream: 'c', type: 'Counted', data: { n: 0 } }, { client }),
        ValidationError,
      );
      // Not aborted: no statement reached the server.
      assert.equal((await client.query('SELECT 1 AS one')).rows[0].one, 1);
      await client.query('ROLLBACK');
    } finally {
      client.release();
    }
  });

  it('stores the schema output (defaults applied), leaving the caller object as it was', async () => {
    const data = { orderId: 'o-3', total: 7 };
    const event = await t.app.events.append({ stream: 'o-3', type: 'OrderPlaced', data });
    assert.deepEqual(event.data, { orderId: 'o-3', total: 7, currency: 'EUR' });
    assert.deepEqual(data, { orderId: 'o-3', total: 7 });
    const again = await t.app.events.get(event.position);
    assert.deepEqual(again?.data, { orderId: 'o-3', total: 7, currency: 'EUR' });
  });

  it('awaits async validators, one per event, and accepts what passes', async () => {
    const events = await t.app.events.append([
      { stream: 'n', type: 'Counted', data: { n: 1 } },
      { stream: 'n', type: 'Code', data: 'ABC' },
      { stream: 'n', type: 'Shipped', data: { carrier: 'dhl' } },
    ]);
    assert.deepEqual(
      events.map((e) => e.data),
      [{ n: 1 }, 'ABC', { carrier: 'dhl' }],
    );
  });

  it('keeps a multi-line message on one line, and counts the other issues', async () => {
    await refuses(
      () => t.app.events.append({ stream: 'n', type: 'Code', data: 'abc' }),
      /^event\.data does not match the schema of "Code": expected upper case for example "ABC"$/,
    );
    await refuses(
      // @ts-expect-error both fields are wrong
      () => t.app.events.append({ stream: 'n', type: 'OrderPlaced', data: { orderId: 1, total: 'x' } }),
      /^event\.data\.orderId does not match .* \(and 1 more issue\)$/,
    );
  });

  it('does not look at types without a schema', async () => {
    const event = await t.app.events.append({ stream: 'x', type: 'Other', data: { anything: [1, 'two'] } });
    assert.deepEqual(event.data, { anything: [1, 'two'] });
  });

  it('refuses something that is not a Standard Schema when the app is created', () => {
    assert.throws(
      () => createApp({ databaseUrl: databaseUrl(), events: { schemas: { X: {} as StandardSchemaV1 } } }),
      /^ValidationError: events\.schemas\["X"\] is not a Standard Schema: expected a validator with "~standard"\.validate/,
    );
  });
});

describe('task schemas', () => {
  let t: TestApp<{ tasks: { send: { to: string; tries?: number }; count: { n: number } } }>;
  before(async () => {
    t = await isolatedApp('typing_tasks');
  });
  after(async () => t.cleanup());

  const jobCount = async () =>
    Number((await t.pool.query(`SELECT count(*) FROM "${t.schema}".jobs`)).rows[0].count);

  const refuses = async (defer: () => Promise<unknown>, message: RegExp) => {
    const before = await jobCount();
    await assert.rejects(defer(), (error: unknown) => {
      assert.ok(error instanceof ValidationError, `expected ValidationError, got ${error}`);
      assert.match(error.message, message);
      return true;
    });
    assert.equal(await jobCount(), before, 'nothing enqueued');
  };

  it('validates args at defer time, through the task, by name, and in deferMany', async () => {
    const send = t.app.task(
      'send',
      { schema: z.object({ to: z.string().min(3), tries: z.number().default(1) }) },
      async () => {},
    );
    await refuses(
      () => send.defer({ to: 'a' }),
      /^args\.to does not match the schema of task "send": Too small: expected string to have >=3 characters$/,
    );
    await refuses(
      () => t.app.defer('send', { to: 'b' }),
      /^args\.to does not match the schema of task "send": /,
    );
    await refuses(
      () => send.deferMany([{ args: { to: 'abc' } }, { args: { to: 'x' } }]),
      /^jobs\[1\]\.args\.to does not match the schema of task "send": /,
    );
    const { id } = (await send.defer({ to: 'abc' })) as { id: string };
    const { rows } = await t.pool.query(`SELECT args FROM "${t.schema}".jobs WHERE id = $1`, [id]);
    assert.deepEqual(rows[0].args, { to: 'abc', tries: 1 }, 'the schema output is stored');
  });

  it('awaits an async validator', async () => {
    t.app.task('count', { schema: slowPositive }, async () => {});
    await refuses(
      () => t.app.defer('count', { n: 0 }),
      /^args\.n does not match .*: must be a positive number$/,
    );
    const result = await t.app.defer('count', { n: 2 });
    assert.equal(result.enqueued, true);
  });

  it('refuses a task schema that is not a Standard Schema when the task is registered', () => {
    assert.throws(
      () =>
        t.app.task(
          'send',
          { schema: { validate: () => ({}) } as unknown as StandardSchemaV1<unknown, { to: string }> },
          async () => {},
        ),
      /^ValidationError: task "send" schema is not a Standard Schema/,
    );
  });
});
