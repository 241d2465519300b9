/**
 * Where outbatch's own files are: the folder holding its package.json and schema/. Found by
 * walking up from this module, so it is the same answer in a checkout (src/, run by tsx) and
 * in the published package (dist/src/, compiled), whatever the depth.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

function findRoot(from: string): string {
  let dir = from;
  for (;;) {
    const manifest = path.join(dir, 'package.json');
    if (
      existsSync(manifest) &&
      (JSON.parse(readFileSync(manifest, 'utf8')) as { name?: string }).name === 'outbatch'
    ) {
      return dir;
    }
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`outbatch's package.json was not found above ${from}`);
    dir = parent;
  }
}

export const PACKAGE_ROOT = findRoot(path.dirname(fileURLToPath(import.meta.url)));

export const packageVersion = (): string =>
  (JSON.parse(readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
