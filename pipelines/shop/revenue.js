/**
 * Exactly-once projection: revenue per customer per day (UTC), maintained by one bulk
 * upsert per page through the page's transaction, so the totals and the checkpoint
 * commit together. Refunds subtract.
 */
import { aggregateBy, bulkWrite } from '../../src/index.js';
import { shopSchema } from './tables.js';
export const REVENUE_OPTIONS = {
  types: ['OrderPlaced', 'OrderRefunded'],
  trigger: { onAppend: { debounce: { milliseconds: 100 } } },
  batchSize: 1000,
};
export function revenuePipeline(schema) {
  const s = shopSchema(schema);
  const upsert = `
    INSERT INTO ${s}.revenue AS r (version, customer, day, orders, amount_cents)
    SELECT $1, * FROM unnest($2::text[], $3::date[], $4::int[], $5::bigint[])
    ON CONFLICT (version, customer, day) DO UPDATE
      SET orders = r.orders + EXCLUDED.orders, amount_cents = r.amount_cents + EXCLUDED.amount_cents`;
  return (events$, ctx) =>
    events$.pipe(
      aggregateBy(
        (event) => `${event.data.customerId}|${event.recordedAt.toISOString().slice(0, 10)}`,
        () => ({ customer: '', day: '', orders: 0, amountCents: 0 }),
        (totals, event) => {
          const data = event.data;
          const sign = event.type === 'OrderRefunded' ? -1 : 1;
          return {
            customer: data.customerId,
            day: event.recordedAt.toISOString().slice(0, 10),
            orders: totals.orders + sign,
            amountCents: totals.amountCents + sign * data.amountCents,
          };
        },
      ),
      bulkWrite(ctx.tx, upsert, (rows) => [
        ctx.version,
        rows.map((row) => row.value.customer),
        rows.map((row) => row.value.day),
        rows.map((row) => row.value.orders),
        rows.map((row) => row.value.amountCents),
      ]),
    );
}
export function revenueProcessor(app, schema) {
  return app.processor('revenue-by-customer-day', REVENUE_OPTIONS, revenuePipeline(schema));
}
//# sourceMappingURL=revenue.js.map
