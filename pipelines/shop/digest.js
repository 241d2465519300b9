/**
 * A processor that defers jobs: one digest email per customer who ordered, coalesced by
 * a queueing lock so a busy customer gets one pending digest, not one per order. The
 * jobs are deferred through the page's transaction: they exist iff the page commits.
 */
import { eachInOrder, groupItemsBy } from '../../src/index.js';
import { shopSchema } from './tables.js';
export function digestPipeline(app, schema) {
  const s = shopSchema(schema);
  const sendDigest = app.task(
    'send-digest',
    { queue: 'emails', retry: { attempts: 3 }, transaction: true },
    async (args, ctx) => {
      // "Sending" is recording the digest; it commits with the job's completion.
      await ctx.tx.query(`INSERT INTO ${s}.digests (customer, orders) VALUES ($1, $2)`, [
        args.customerId,
        args.orders,
      ]);
    },
  );
  const processor = app.processor(
    'customer-digests',
    { types: ['OrderPlaced'], trigger: { every: { seconds: 5 } } },
    (events$, ctx) =>
      events$.pipe(
        groupItemsBy((event) => event.data.customerId),
        eachInOrder((group) =>
          sendDigest.defer(
            { customerId: group.key, orders: group.items.length },
            {
              client: ctx.tx,
              queueingLock: `digest:${group.key}`,
              onConflict: 'ignore',
              delay: { seconds: 2 },
            },
          ),
        ),
      ),
  );
  return { sendDigest, processor };
}
//# sourceMappingURL=digest.js.map
