/**
 * The typed signatures of `append`, `task`, `defer` and `processor`, which App<T> uses when
 * the app declared its events or tasks (declare.ts). The untyped ones are method signatures
 * too: TypeScript compares methods bivariantly, so an App<Declared> still fits where a plain
 * App is expected (the admin server, your own helpers, `app as App` as the escape hatch).
 */
import type { Observable } from 'rxjs';
import type { AppendedEvent, AppendOptions } from '../events/append.js';
import type { NewEvent } from '../events/validate.js';
import type { DeferResult } from '../jobs/defer.js';
import type {
  BatchHandler,
  BatchTaskOptions,
  DeferAndWaitOptions,
  DeferOptions,
  Handler,
  Task,
  TaskOptions,
} from '../jobs/task.js';
import type { Pipeline, ProcessorContext, ProcessorOptions } from '../processors/definition.js';
import type { EventData, EventName, TaskArgs, TaskName, TypedNewEvent, TypedStoredEvent } from './declare.js';

/** An appended event of the declared type K. */
export type TypedAppendedEvent<T, K extends EventName<T> = EventName<T>> =
  K extends EventName<T> ? AppendedEvent<EventData<T, K>> & { type: K } : never;

/** `app.events.append` without declared events: any type, `data` as given. */
export interface UntypedAppend {
  append<D>(event: NewEvent<D>, options?: AppendOptions): Promise<AppendedEvent<D>>;
  append<D>(events: NewEvent<D>[], options?: AppendOptions): Promise<AppendedEvent<D>[]>;
}

/** `app.events.append` with declared events: only declared types, each with its own data. */
export interface TypedAppend<T> {
  append<K extends EventName<T>>(
    event: NewEvent<EventData<T, K>> & { type: K },
    options?: AppendOptions,
  ): Promise<TypedAppendedEvent<T, K>>;
  append(events: TypedNewEvent<T>[], options?: AppendOptions): Promise<TypedAppendedEvent<T>[]>;
}

/** `args` (optional only when the args type allows undefined), then the options. */
export type DeferArgs<A, O = DeferOptions> = undefined extends A
  ? [args?: A, options?: O]
  : [args: A, options?: O];

/** `app.task` and `app.defer` with declared tasks: declared names only, args checked. */
export interface TypedTasks<T> {
  /** A batch task (docs/batches.md): the handler gets the args of many jobs at once. */
  task<N extends TaskName<T>>(
    name: N,
    options: BatchTaskOptions<TaskArgs<T, N>>,
    handler: BatchHandler<TaskArgs<T, N>>,
  ): Task<TaskArgs<T, N>>;
  task<N extends TaskName<T>>(
    name: N,
    options: TaskOptions<TaskArgs<T, N>>,
    handler: Handler<TaskArgs<T, N>>,
  ): Task<TaskArgs<T, N>>;
  defer<N extends TaskName<T>>(task: N, ...rest: DeferArgs<TaskArgs<T, N>>): Promise<DeferResult>;
  defer<A>(task: Task<A>, ...rest: DeferArgs<NoInfer<A>>): Promise<DeferResult>;
  deferAndWait<R = unknown, N extends TaskName<T> = TaskName<T>>(
    task: N,
    ...rest: DeferArgs<TaskArgs<T, N>, DeferAndWaitOptions>
  ): Promise<R>;
  deferAndWait<R = unknown, A = unknown>(
    task: Task<A>,
    ...rest: DeferArgs<NoInfer<A>, DeferAndWaitOptions>
  ): Promise<R>;
}

/** What `app.processor` returns. */
export interface ProcessorHandle {
  name: string;
  /** Defers a run now (deduplicated like a trigger); the job id, or null when one was waiting. */
  runNow(): Promise<string | null>;
}

/** A pipeline over the declared event types K: `events$` is their discriminated union. */
export type TypedPipeline<T, K extends EventName<T>> = (
  events$: Observable<TypedStoredEvent<T, K>>,
  ctx: ProcessorContext,
) => Observable<unknown>;

/** `app.processor` without declared events. */
export interface UntypedProcessors {
  processor(name: string, options: ProcessorOptions, pipeline: Pipeline): ProcessorHandle;
}

/**
 * `app.processor` with declared events: `types` must name declared types and narrows
 * `events$`; without `types` a processor reads every event, declared or not, as StoredEvent.
 */
export interface TypedProcessors<T> {
  processor<K extends EventName<T>>(
    name: string,
    options: Omit<ProcessorOptions, 'types'> & { types: readonly K[] },
    pipeline: TypedPipeline<T, K>,
  ): ProcessorHandle;
  processor(
    name: string,
    options: ProcessorOptions & { types?: undefined },
    pipeline: Pipeline,
  ): ProcessorHandle;
}
