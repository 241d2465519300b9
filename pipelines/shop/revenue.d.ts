/**
 * Exactly-once projection: revenue per customer per day (UTC), maintained by one bulk
 * upsert per page through the page's transaction, so the totals and the checkpoint
 * commit together. Refunds subtract.
 */
import { type App, type Pipeline, type ProcessorOptions } from '../../src/index.js';
export interface OrderData {
  orderId: string;
  customerId: string;
  amountCents: number;
}
export declare const REVENUE_OPTIONS: ProcessorOptions;
export declare function revenuePipeline(schema: string): Pipeline;
export declare function revenueProcessor(
  app: App,
  schema: string,
): {
  name: string;
  runNow(): Promise<string | null>;
};
