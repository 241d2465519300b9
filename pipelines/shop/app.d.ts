import { type App, type AppOptions } from '../../src/index.js';
export interface ShopOptions extends AppOptions {
  /** Schema of the shop's own tables (default `shop`). */
  shopSchema?: string;
  /** Folder of the NDJSON export (default `.outbatch/export`). */
  exportDir?: string;
}
export declare function createShopApp(options?: ShopOptions): App;
/** Migrates outbatch and creates the shop's tables. */
export declare function prepareShop(app: App, shopSchema?: string): Promise<void>;
declare const app: App;
export default app;
