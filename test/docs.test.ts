// @smoke
/**
 * The documentation cannot rot: every ```ts sample in README.md and docs/*.md is type-checked
 * against src/, relative links between the pages must resolve, and the README stays short.
 *
 * Each sample becomes a module of its own in a temporary folder inside the project (so `pg`,
 * `rxjs` and `luxon` resolve from node_modules), with `from 'outbatch'` pointed at
 * src/index.ts. One compiler program checks them all: building it is most of the cost.
 *
 * Conventions in the Markdown (HTML comments, invisible on GitHub):
 *
 *   <!-- ts-setup
 *   declarations -->           prepended to every later sample of the same page (a later
 *                              ts-setup replaces it)
 *   <!-- ts-preamble
 *   declarations -->           prepended to the next sample only; nothing but blank lines may
 *                              stand between the comment and the sample
 *   ```ts nocheck: <reason>    not checked; the reason is required, and the test lists it
 *
 * Use them to declare what a fragment takes from its surroundings (`declare const client: …`),
 * never to hide the API being shown.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const pages = [
  'README.md',
  ...fs
    .readdirSync(path.join(root, 'docs'))
    .filter((name) => name.endsWith('.md'))
    .sort()
    .map((name) => `docs/${name}`),
];

interface Sample {
  page: string;
  /** 1-based line of the sample's first code line in the page. */
  line: number;
  /** Prepended code (setup, then preamble), with the page line each of its lines came from. */
  prelude: Array<{ text: string; line: number }>;
  code: string;
}

interface Skipped {
  page: string;
  line: number;
  reason: string;
}

/** Pulls the ```ts samples out of one page, with their hidden setup and preamble. */
function extractSamples(page: string, text: string): { samples: Sample[]; skipped: Skipped[] } {
  const lines = text.split('\n');
  const samples: Sample[] = [];
  const skipped: Skipped[] = [];
  let setup: Sample['prelude'] = [];
  let preamble: { lines: Sample['prelude']; endLine: number } | undefined;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    const comment = /^<!--\s*ts-(setup|preamble)\s*$/.exec(line);
    if (comment) {
      const body: Sample['prelude'] = [];
      let j = i + 1;
      for (; j < lines.length && lines[j]!.trim() !== '-->'; j++) body.push({ text: lines[j]!, line: j + 1 });
      if (j === lines.length)
        throw new Error(`${page}:${i + 1}: ts-${comment[1]} comment is not closed by a "-->" line`);
      if (comment[1] === 'setup') setup = body;
      else preamble = { lines: body, endLine: j + 1 };
      i = j;
      continue;
    }
    const fence = /^(\s*)(`{3,}|~{3,})\s*([\w-]*)\s*(.*)$/.exec(line);
    if (!fence) {
      if (preamble && line.trim() !== '') {
        throw new Error(
          `${page}:${preamble.endLine}: a ts-preamble must stand right before a \`\`\`ts sample`,
        );
      }
      continue;
    }
    const [, , marker, lang, info] = fence as unknown as [string, string, string, string, string];
    let end = i + 1;
    while (end < lines.length && !lines[end]!.trimStart().startsWith(marker)) end++;
    const code = lines.slice(i + 1, end).join('\n');
    if (lang === 'ts' || lang === 'typescript') {
      const nocheck = /^nocheck\b:?\s*(.*)$/.exec(info.trim());
      if (nocheck) {
        if (!nocheck[1]) throw new Error(`${page}:${i + 1}: a \`\`\`ts nocheck sample must say why`);
        skipped.push({ page, line: i + 1, reason: nocheck[1] });
      } else if (info.trim() !== '') {
        throw new Error(
          `${page}:${i + 1}: unknown sample flag "${info.trim()}" (expected nocheck: <reason>)`,
        );
      } else {
        samples.push({ page, line: i + 2, prelude: [...setup, ...(preamble?.lines ?? [])], code });
      }
    } else if (preamble) {
      throw new Error(`${page}:${preamble.endLine}: a ts-preamble must stand right before a \`\`\`ts sample`);
    }
    preamble = undefined;
    i = end;
  }
  if (preamble) throw new Error(`${page}:${preamble.endLine}: a ts-preamble at the end of the page`);
  return { samples, skipped };
}

interface Checked {
  file: string;
  /** Page and line of each line of the generated module. */
  origin: Array<{ page: string; line: number }>;
}

/** Writes a sample as a module that imports the package source; returns where each line came from. */
function writeSample(dir: string, name: string, sample: Sample): Checked {
  const file = path.join(dir, `${name}.ts`);
  const entry = path
    .relative(dir, path.join(root, 'src', 'index.js'))
    .split(path.sep)
    .join('/');
  const toSource = (code: string) => code.replace(/from\s+(['"])outbatch\1/g, `from '${entry}'`);
  const origin: Checked['origin'] = [];
  const out: string[] = [];
  for (const { text, line } of sample.prelude) {
    out.push(toSource(text));
    origin.push({ page: sample.page, line });
  }
  sample.code.split('\n').forEach((text, k) => {
    out.push(toSource(text));
    origin.push({ page: sample.page, line: sample.line + k });
  });
  // Every sample is a module, so top-level await works and names do not clash between samples.
  out.push('export {};');
  fs.writeFileSync(file, `${out.join('\n')}\n`);
  return { file, origin };
}

function compilerOptions(): ts.CompilerOptions {
  const configPath = path.join(root, 'tsconfig.json');
  const config = ts.readConfigFile(configPath, ts.sys.readFile.bind(ts.sys));
  if (config.error) throw new Error(ts.flattenDiagnosticMessageText(config.error.messageText, '\n'));
  const parsed = ts.parseJsonConfigFileContent(config.config, ts.sys, root);
  return { ...parsed.options, noEmit: true, declaration: false, sourceMap: false, incremental: false };
}

/** Type-checks the files in one program; returns one readable line per problem, by file. */
function typeCheck(files: Checked[]): Map<string, string[]> {
  const program = ts.createProgram(
    files.map((f) => f.file),
    compilerOptions(),
  );
  const problems = new Map<string, string[]>();
  const global = program.getOptionsDiagnostics().concat(program.getGlobalDiagnostics());
  if (global.length > 0) {
    throw new Error(global.map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n')).join('\n'));
  }
  for (const { file, origin } of files) {
    const source = program.getSourceFile(file);
    if (!source) throw new Error(`${file} is not in the program`);
    const diagnostics = [
      ...program.getSyntacticDiagnostics(source),
      ...program.getSemanticDiagnostics(source),
    ];
    problems.set(
      file,
      diagnostics.map((d) => {
        const { line } = source.getLineAndCharacterOfPosition(d.start ?? 0);
        const where = origin[line] ?? origin[origin.length - 1]!;
        return `${where.page}:${where.line}: ${ts.flattenDiagnosticMessageText(d.messageText, ' ')}`;
      }),
    );
  }
  return problems;
}

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens. */
function anchorOf(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[`*_]/g, '')
    .replace(/[^\p{L}\p{N} -]/gu, '')
    .replace(/ /g, '-');
}

function anchorsIn(text: string): Set<string> {
  const anchors = new Set<string>();
  let inFence = false;
  for (const line of text.split('\n')) {
    if (/^\s*(```|~~~)/.test(line)) inFence = !inFence;
    const heading = !inFence && /^#{1,6}\s+(.*)$/.exec(line);
    if (heading) anchors.add(anchorOf(heading[1]!));
  }
  return anchors;
}

/** Markdown links outside code: `[text](target)`. */
function linksIn(text: string): Array<{ target: string; line: number }> {
  const links: Array<{ target: string; line: number }> = [];
  let inFence = false;
  text.split('\n').forEach((line, i) => {
    if (/^\s*(```|~~~)/.test(line)) {
      inFence = !inFence;
      return;
    }
    if (inFence) return;
    const prose = line.replace(/`[^`]*`/g, '');
    for (const match of prose.matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) {
      links.push({ target: match[1]!, line: i + 1 });
    }
  });
  return links;
}

describe('documentation', () => {
  const samples: Sample[] = [];
  const skipped: Skipped[] = [];
  let dir = '';
  let checked: Checked[] = [];
  let probes: Checked[] = [];
  let problems = new Map<string, string[]>();

  before(() => {
    for (const page of pages) {
      const found = extractSamples(page, fs.readFileSync(path.join(root, page), 'utf8'));
      samples.push(...found.samples);
      skipped.push(...found.skipped);
    }
    fs.mkdirSync(path.join(root, '.outbatch'), { recursive: true });
    dir = fs.mkdtempSync(path.join(root, '.outbatch', 'docs-samples-'));
    checked = samples.map((sample, k) =>
      writeSample(dir, `${sample.page.replace(/\W+/g, '_')}_${sample.line}_${k}`, sample),
    );
    // Two broken samples checked in the same program: proof that the check can fail at all.
    const probe = (name: string, code: string): Checked =>
      writeSample(dir, name, { page: `(probe ${name})`, line: 1, prelude: [], code });
    probes = [
      probe(
        'wrong_method',
        "import { createApp } from 'outbatch';\nawait createApp().events.apend({ stream: 's', type: 't', data: 1 });",
      ),
      probe(
        'wrong_option',
        "import { createApp } from 'outbatch';\ncreateApp().task('t', { queu: 'mail' }, async () => {});",
      ),
    ];
    problems = typeCheck([...checked, ...probes]);
  });

  after(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('type-checks every ts sample against the source', (t) => {
    assert.ok(samples.length > 0, 'no ```ts samples found');
    t.diagnostic(`${samples.length} samples type-checked, ${skipped.length} skipped (nocheck)`);
    for (const s of skipped) t.diagnostic(`skipped ${s.page}:${s.line}: ${s.reason}`);
    const found = checked.flatMap((c) => problems.get(c.file) ?? []);
    assert.deepEqual(found, [], `samples that do not type-check:\n${found.join('\n')}`);
  });

  it('fails a sample that uses a wrong API name or option', () => {
    for (const p of probes) assert.ok((problems.get(p.file) ?? []).length > 0, `${p.file} was not caught`);
  });

  it('reads the sample conventions: setup, preamble, nocheck with a reason', () => {
    const page = [
      '<!-- ts-setup',
      'declare const a: number;',
      '-->',
      '<!-- ts-preamble',
      'declare const b: number;',
      '-->',
      '',
      '```ts',
      'a + b;',
      '```',
      '```ts nocheck: needs a running mail server',
      'send();',
      '```',
      '```ts',
      'a;',
      '```',
    ].join('\n');
    const found = extractSamples('probe.md', page);
    assert.deepEqual(
      found.samples.map((s) => [s.line, s.prelude.map((p) => p.text), s.code]),
      [
        [9, ['declare const a: number;', 'declare const b: number;'], 'a + b;'],
        [15, ['declare const a: number;'], 'a;'],
      ],
    );
    assert.deepEqual(found.skipped, [{ page: 'probe.md', line: 11, reason: 'needs a running mail server' }]);
    assert.throws(() => extractSamples('probe.md', '```ts nocheck\nx;\n```'), /must say why/);
    assert.throws(
      () => extractSamples('probe.md', '<!-- ts-preamble\nx;\n-->\ntext\n```ts\n```'),
      /right before/,
    );
  });

  it('resolves every relative link between the pages', () => {
    const broken: string[] = [];
    for (const page of pages) {
      for (const { target, line } of linksIn(fs.readFileSync(path.join(root, page), 'utf8'))) {
        if (/^[a-z]+:/i.test(target)) continue; // https:, mailto:
        const [file = '', anchor] = target.split('#');
        const resolved =
          file === '' ? path.join(root, page) : path.resolve(path.dirname(path.join(root, page)), file);
        if (!fs.existsSync(resolved)) {
          broken.push(`${page}:${line}: ${target} (no such file)`);
        } else if (
          anchor &&
          resolved.endsWith('.md') &&
          !anchorsIn(fs.readFileSync(resolved, 'utf8')).has(anchor)
        ) {
          broken.push(`${page}:${line}: ${target} (no heading with that anchor)`);
        }
      }
    }
    assert.deepEqual(broken, []);
  });

  it('keeps the README short, with the test command, leading to every page', () => {
    const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
    const lineCount = readme.trimEnd().split('\n').length;
    assert.ok(lineCount <= 200, `README.md has ${lineCount} lines: at most 200 (move detail into docs/)`);
    assert.match(readme, /^npm install && npm start\s+#/m);
    assert.match(readme, /^npm install && npm test\s+#/m);
    const linked = new Set(linksIn(readme).map((l) => l.target.split('#')[0]));
    const missing = pages.filter((p) => p !== 'README.md' && !linked.has(p));
    assert.deepEqual(missing, [], 'docs pages the README does not link');
  });
});
