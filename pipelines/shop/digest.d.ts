/**
 * A processor that defers jobs: one digest email per customer who ordered, coalesced by
 * a queueing lock so a busy customer gets one pending digest, not one per order. The
 * jobs are deferred through the page's transaction: they exist iff the page commits.
 */
import { type App } from '../../src/index.js';
export declare function digestPipeline(
  app: App,
  schema: string,
): {
  sendDigest: import('../../src/index.js').Task<{
    customerId: string;
    orders: number;
  }>;
  processor: {
    name: string;
    runNow(): Promise<string | null>;
  };
};
