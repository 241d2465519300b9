/**
 * The demo shop's own tables, in a schema of its own (`shop` by default). The revenue
 * projection keeps a `version` column so a rebuild writes beside the live version.
 */
import type { Queryable } from '../../src/index.js';
export declare function shopSchema(name: string): string;
export declare function createShopTables(db: Queryable, schema: string): Promise<void>;
