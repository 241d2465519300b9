/**
 * Runs the Standard Schema validators an app registered (event data per type, task args):
 * the first issue becomes a one-line ValidationError, thrown before anything is written.
 */
import { ValidationError } from '../errors.js';
import type { StandardSchemaV1 } from './standardSchema.js';

/** Refuses, where it is registered, something that is not a Standard Schema (rather than at the first append). */
export function checkSchema(schema: unknown, where: string): StandardSchemaV1 {
  const props = (schema as { '~standard'?: { validate?: unknown } } | null)?.['~standard'];
  if (
    schema === null ||
    (typeof schema !== 'object' && typeof schema !== 'function') ||
    typeof props?.validate !== 'function'
  ) {
    throw new ValidationError(
      `${where} is not a Standard Schema: expected a validator with "~standard".validate (zod 3.24+, valibot 1, arktype…)`,
    );
  }
  return schema as StandardSchemaV1;
}

/**
 * The schema's output for `value` (what is stored: defaults and transforms apply), or a
 * ValidationError naming `where` plus the first issue's path, e.g.
 * `events[2].data.total does not match the schema of "OrderPlaced": expected number, received string`.
 * A synchronous validator is not awaited.
 */
export async function validateWith(
  schema: StandardSchemaV1,
  value: unknown,
  where: string,
  schemaName: string,
): Promise<unknown> {
  let result = schema['~standard'].validate(value);
  if (result instanceof Promise) result = await result;
  if (!result.issues) return result.value;
  const [first] = result.issues;
  const others = result.issues.length - 1;
  const more = others > 0 ? ` (and ${others} more issue${others > 1 ? 's' : ''})` : '';
  const message = oneLine(first?.message) || 'invalid';
  throw new ValidationError(
    `${where}${formatPath(first?.path)} does not match ${schemaName}: ${message}${more}`,
  );
}

/** `.items[0].price`, `["a b"]`: the way the other validation messages write paths. */
function formatPath(path: StandardSchemaV1.Issue['path']): string {
  let out = '';
  for (const segment of path ?? []) {
    const key = typeof segment === 'object' && segment !== null ? segment.key : segment;
    if (typeof key === 'number') out += `[${key}]`;
    else if (typeof key === 'symbol') out += `[${String(key)}]`;
    else if (/^[A-Za-z_$][\w$]*$/.test(key)) out += `.${key}`;
    else out += `[${JSON.stringify(key)}]`;
  }
  return out;
}

/** Validators' messages may span lines; a ValidationError is one line. */
function oneLine(message: unknown): string {
  return typeof message === 'string' ? message.replace(/\s*\n\s*/g, ' ').trim() : '';
}
