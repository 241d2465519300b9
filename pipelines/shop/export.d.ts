import { type App } from '../../src/index.js';
/** The checkpoint on the file's last line, reading only its tail. */
export declare function lastExported(file: string): Promise<string | undefined>;
export declare function exportProcessor(
  app: App,
  folder: string,
): {
  name: string;
  runNow(): Promise<string | null>;
};
