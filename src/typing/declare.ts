/**
 * Compile-time declarations of an app's events and tasks: `createApp<AppTypes>()` checks
 * appends, defers, handlers and processor pipelines against them. Types only: nothing here
 * exists at runtime (runtime checks are the schemas, check.ts). An app declared without
 * `events` (or `tasks`) keeps the untyped signatures for them, exactly as before.
 */
import type { StoredEvent } from '../events/storedEvent.js';
import type { NewEvent } from '../events/validate.js';
import type { StandardSchemaV1 } from './standardSchema.js';

declare const versionTag: unique symbol;

/**
 * An event type at a version other than 1: `{ OrderPlaced: Versioned<{ orderId: string }, 2> }`.
 * A plain data shape declares version 1. The version is the one appends write and readers
 * see (older stored versions are upcast to it).
 */
export interface Versioned<D, V extends number = number> {
  readonly [versionTag]: V;
  readonly data: D;
}

/**
 * What an app declares: `events` maps each event type to its data shape (or `Versioned<…>`),
 * `tasks` maps each task name to its args. Either may be left out (then it stays untyped).
 */
export interface AppTypes {
  events?: object;
  tasks?: object;
}

/** The declared event map, or `undefined` when the app declared none (or only `Record<string, …>`). */
export type DeclaredEvents<T> = T extends { events: infer E extends object }
  ? string extends keyof E
    ? undefined
    : E
  : undefined;

/** The declared task map, or `undefined`. */
export type DeclaredTasks<T> = T extends { tasks: infer M extends object }
  ? string extends keyof M
    ? undefined
    : M
  : undefined;

/** Event type names the app may use: the declared ones, or any string. */
export type EventName<T> = DeclaredEvents<T> extends infer E extends object ? keyof E & string : string;

/** The data of event type K (unknown when undeclared). */
export type EventData<T, K> =
  DeclaredEvents<T> extends infer E extends object
    ? K extends keyof E
      ? E[K] extends Versioned<infer D, number>
        ? D
        : E[K]
      : unknown
    : unknown;

/** The declared version of event type K (1 for a plain data shape; `number` when undeclared). */
export type EventVersion<T, K> =
  DeclaredEvents<T> extends infer E extends object
    ? K extends keyof E
      ? E[K] extends Versioned<unknown, infer V>
        ? V
        : 1
      : number
    : number;

/** A new event of one declared type, or, K being a union, of any of them (a discriminated union). */
export type TypedNewEvent<T, K extends EventName<T> = EventName<T>> =
  K extends EventName<T> ? NewEvent<EventData<T, K>> & { type: K } : never;

/** A stored event of the declared types K, as a processor with `types: K[]` receives it. */
export type TypedStoredEvent<T, K extends EventName<T> = EventName<T>> =
  K extends EventName<T> ? StoredEvent<EventData<T, K>> & { type: K } : never;

/** Task names the app may use: the declared ones, or any string. */
export type TaskName<T> = DeclaredTasks<T> extends infer M extends object ? keyof M & string : string;

/** The args of task N (unknown when undeclared). */
export type TaskArgs<T, N> =
  DeclaredTasks<T> extends infer M extends object ? (N extends keyof M ? M[N] : unknown) : unknown;

/** `createApp({ events: { schemas } })`: a validator per event type, keyed by the declared names. */
export type EventSchemas<T> =
  DeclaredEvents<T> extends infer E extends object
    ? { [K in keyof E & string]?: StandardSchemaV1<unknown, EventData<T, K>> }
    : Record<string, StandardSchemaV1>;

/**
 * Declarations taken from the schemas themselves: `{ events: InferSchemas<typeof schemas> }`
 * gives each type its schema's input (what `append` accepts; the stored output may hold more,
 * such as defaults). Works for task schemas too.
 */
export type InferSchemas<S extends Record<string, StandardSchemaV1>> = {
  [K in keyof S]: StandardSchemaV1.InferInput<S[K]>;
};
