export interface DemoOptions {
  databaseUrl?: string;
  schema?: string;
  dataDir?: string;
  shopSchema: string;
  /** Stop after this many seconds (default: until Ctrl-C). */
  durationSeconds?: number;
  signal: AbortSignal;
  out: NodeJS.WriteStream;
  /** Simulated orders per second (default 20). */
  rate?: number;
}
export interface DemoSummary {
  appended: number;
  eventsTotal: string;
  jobsSucceeded: number;
  jobsFailed: number;
  processors: {
    name: string;
    version: number;
    state: string;
    lagEvents: number;
    processed: string;
  }[];
}
export declare function runDemo(options: DemoOptions): Promise<DemoSummary>;
