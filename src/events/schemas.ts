/**
 * Event data validation by type, with the Standard Schema validators an app registers
 * (`createApp({ events: { schemas } })`). Runs before the shape and JSON checks, so what
 * is checked and stored is each schema's output. Types without a schema are not looked at.
 */
import { checkSchema, validateWith } from '../typing/check.js';
import type { StandardSchemaV1 } from '../typing/standardSchema.js';
import type { NewEvent } from './validate.js';

export type EventSchemaMap = ReadonlyMap<string, StandardSchemaV1>;

/** The registered schemas, checked once at createApp; undefined without any (append then skips this step). */
export function eventSchemaMap(schemas: Record<string, unknown> | undefined): EventSchemaMap | undefined {
  if (schemas === undefined) return undefined;
  const map = new Map<string, StandardSchemaV1>();
  for (const [type, schema] of Object.entries(schemas)) {
    if (schema !== undefined) map.set(type, checkSchema(schema, `events.schemas["${type}"]`));
  }
  return map.size > 0 ? map : undefined;
}

/**
 * The input with each schema'd event's data replaced by its schema's output; the caller's
 * objects are not changed. The first failure throws, so one bad event rejects the batch.
 */
export async function applyEventSchemas<E extends NewEvent | NewEvent[]>(
  input: E,
  schemas: EventSchemaMap,
): Promise<E> {
  const many = Array.isArray(input);
  const list: unknown[] = many ? input : [input];
  let out: unknown[] | undefined;
  for (let i = 0; i < list.length; i++) {
    const event = list[i] as Partial<NewEvent> | null;
    // Not an event at all: validateEvents reports it, with the same wording as without schemas.
    if (event === null || typeof event !== 'object' || typeof event.type !== 'string') continue;
    const schema = schemas.get(event.type);
    if (!schema) continue;
    const where = many ? `events[${i}].data` : 'event.data';
    const data = await validateWith(schema, event.data, where, `the schema of "${event.type}"`);
    if (data !== event.data) {
      out ??= [...list];
      out[i] = { ...event, data };
    }
  }
  if (!out) return input;
  return (many ? out : out[0]) as E;
}
