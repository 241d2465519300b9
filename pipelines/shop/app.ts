/**
 * The demo shop as an outbatch app: three processors over the order events and a task.
 * `outbatch worker --app pipelines/shop/app.ts` runs it; `npm start` runs it with a
 * simulated shop, a live view and the dashboard (see start.ts and demo.ts).
 */
import path from 'node:path';
import { type App, type AppOptions, createApp, createLogger } from '../../src/index.js';
import { digestPipeline } from './digest.js';
import { exportProcessor } from './export.js';
import { revenueProcessor } from './revenue.js';
import { createShopTables } from './tables.js';

export interface ShopOptions extends AppOptions {
  /** Schema of the shop's own tables (default `shop`). */
  shopSchema?: string;
  /** Folder of the NDJSON export (default `.outbatch/export`). */
  exportDir?: string;
}

export function createShopApp(options: ShopOptions = {}): App {
  const app = createApp(options);
  const shop = options.shopSchema ?? 'shop';
  revenueProcessor(app, shop);
  digestPipeline(app, shop);
  exportProcessor(app, options.exportDir ?? path.join('.outbatch', 'export'));
  return app;
}

/** Migrates outbatch and creates the shop's tables. */
export async function prepareShop(app: App, shopSchema = 'shop'): Promise<void> {
  await app.migrate();
  await createShopTables((await app.database()).pool, shopSchema);
}

// What `outbatch worker --app pipelines/shop/app.ts` runs: schema from --schema
// (OUTBATCH_SCHEMA), shop tables from OUTBATCH_SHOP_SCHEMA, export folder from OUTBATCH_EXPORT_DIR.
const app = createShopApp({
  logger: createLogger(),
  shopSchema: process.env.OUTBATCH_SHOP_SCHEMA || undefined,
  exportDir: process.env.OUTBATCH_EXPORT_DIR || undefined,
});
export default app;
