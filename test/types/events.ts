/**
 * Typed events, checked by the compiler only (test/typing.test.ts runs tsc over this folder):
 * plain lines must compile, each `@ts-expect-error` line must not (an unused one fails tsc).
 */
import { map, type Observable } from 'rxjs';
import { z } from 'zod';
import {
  type App,
  type AppendedEvent,
  createApp,
  type EventData,
  type EventVersion,
  type InferSchemas,
  type StoredEvent,
  type Versioned,
} from '../../src/index.js';

type Shop = {
  events: {
    OrderPlaced: { orderId: string; total: number };
    OrderShipped: Versioned<{ orderId: string; carrier: string }, 2>;
  };
};

const app = createApp<Shop>();

// Accepted: declared types with their own data, one event or a mixed batch.
const placed = await app.events.append({
  stream: 'order-1',
  type: 'OrderPlaced',
  data: { orderId: '1', total: 5 },
});
placed.data.total satisfies number;
placed.type satisfies 'OrderPlaced';
placed.duplicate satisfies boolean;
await app.events.append(
  [
    { stream: 'order-1', type: 'OrderPlaced', data: { orderId: '1', total: 5 } },
    { stream: 'order-1', type: 'OrderShipped', data: { orderId: '1', carrier: 'ups' }, idempotencyKey: 'k' },
  ],
  { expectedVersion: 'no_stream' },
);

// Refused: data of the wrong shape, a missing field, an extra one, an undeclared type.
// @ts-expect-error total is a number
await app.events.append({ stream: 'order-1', type: 'OrderPlaced', data: { orderId: '1', total: '5' } });
// @ts-expect-error total is missing
await app.events.append({ stream: 'order-1', type: 'OrderPlaced', data: { orderId: '1' } });
// @ts-expect-error extra is not part of OrderPlaced
await app.events.append({ stream: 'o', type: 'OrderPlaced', data: { orderId: '1', total: 5, extra: 1 } });
// @ts-expect-error OrderCancelled is not declared
await app.events.append({ stream: 'order-1', type: 'OrderCancelled', data: {} });
// @ts-expect-error in a batch each event's data is checked against its own type
await app.events.append([
  { stream: 'order-1', type: 'OrderPlaced', data: { orderId: '1', total: 5 } },
  { stream: 'order-1', type: 'OrderShipped', data: { orderId: '1', total: 5 } },
]);

// The escape hatch: the same app seen as untyped appends any type.
await (app as App).events.append({ stream: 'audit', type: 'Anything', data: { free: true } });
// A typed app fits where a plain App is expected (the admin server, helpers).
const plain: App = app;
void plain;

// Processors: `types` narrows events$ to a discriminated union of the named types.
app.processor('totals', { types: ['OrderPlaced'], trigger: { every: 1000 } }, (events$) =>
  events$.pipe(map((e) => e.data.total satisfies number)),
);
app.processor('both', { types: ['OrderPlaced', 'OrderShipped'], trigger: { every: 1000 } }, (events$) =>
  events$.pipe(
    map((e) => {
      if (e.type === 'OrderShipped') return e.data.carrier satisfies string;
      return e.data.total satisfies number;
    }),
  ),
);
// Without `types` a processor reads every event, declared or not: data stays unknown.
app.processor('all', { trigger: { every: 1000 } }, (events$: Observable<StoredEvent>) => events$);
app.processor('all-untyped-data', { trigger: { every: 1000 } }, (events$) =>
  // @ts-expect-error without `types`, data is unknown
  events$.pipe(map((e) => e.data.total)),
);
// @ts-expect-error OrderCancelled is not declared
app.processor('bad-type', { types: ['OrderCancelled'], trigger: { every: 1000 } }, (events$) => events$);
app.processor('narrowed', { types: ['OrderPlaced'], trigger: { every: 1000 } }, (events$) =>
  // @ts-expect-error events$ holds only OrderPlaced: no carrier
  events$.pipe(map((e) => e.data.carrier)),
);

// Schemas are keyed by declared types and must produce the declared data.
declare const orderPlacedSchema: import('../../src/index.js').StandardSchemaV1<
  unknown,
  { orderId: string; total: number }
>;
createApp<Shop>({ events: { schemas: { OrderPlaced: orderPlacedSchema } } });
// @ts-expect-error OrderShipped's data has no total: a schema for OrderPlaced does not fit
createApp<Shop>({ events: { schemas: { OrderShipped: orderPlacedSchema } } });
// @ts-expect-error OrderCancelled is not declared
createApp<Shop>({ events: { schemas: { OrderCancelled: orderPlacedSchema } } });

// A declaration carries a version: Versioned<D, V>, or a plain shape for version 1.
2 satisfies EventVersion<Shop, 'OrderShipped'>;
1 satisfies EventVersion<Shop, 'OrderPlaced'>;
// @ts-expect-error OrderShipped is at version 2
1 satisfies EventVersion<Shop, 'OrderShipped'>;
({ orderId: '1', carrier: 'ups' }) satisfies EventData<Shop, 'OrderShipped'>;

// Declarations taken from zod schemas, registered at the same time.
const schemas = { Paid: z.object({ orderId: z.string(), cents: z.number().int() }) };
const fromSchemas = createApp<{ events: InferSchemas<typeof schemas> }>({ events: { schemas } });
await fromSchemas.events.append({ stream: 'o', type: 'Paid', data: { orderId: '1', cents: 100 } });
// @ts-expect-error cents is a number, as the schema says
await fromSchemas.events.append({ stream: 'o', type: 'Paid', data: { orderId: '1', cents: '100' } });

// An app without declarations compiles as it always did: any type, data as given.
const untyped = createApp();
const anything = await untyped.events.append({ stream: 's', type: 'Whatever', data: { n: 1 } });
anything satisfies AppendedEvent<{ n: number }>;
const many = await untyped.events.append([{ stream: 's', type: 'A', data: 1 }]);
many satisfies AppendedEvent<number>[];
untyped.processor('any', { types: ['Whatever'], trigger: { every: 1000 } }, (events$) =>
  events$.pipe(map((e) => e.data satisfies unknown)),
);
untyped.task('any-task', {}, async (args: { whatever: boolean }) => args.whatever);
await untyped.defer('any-task', { whatever: true });
