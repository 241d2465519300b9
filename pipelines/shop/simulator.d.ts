/**
 * A pretend shop service: appends orders at a steady rate with a burst now and then,
 * each batch in one transaction (as a service would with its business write).
 */
import type { App } from '../../src/index.js';
export interface SimulatorOptions {
  /** Orders per second in steady state (default 20). */
  rate?: number;
  /** Every this many seconds, a burst of `burstSize` orders at once (default 15 s, 500). */
  burstEverySeconds?: number;
  burstSize?: number;
  customers?: number;
  signal: AbortSignal;
  onAppended?: (count: number) => void;
}
export declare function simulateShop(app: App, options: SimulatorOptions): Promise<number>;
