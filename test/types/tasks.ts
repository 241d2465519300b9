/** Typed tasks, checked by the compiler only (see events.ts): `app.task`, `defer`, `app.defer`, handlers. */
import { type App, createApp, type StandardSchemaV1, type Task } from '../../src/index.js';

type Mail = {
  tasks: {
    sendMail: { to: string; subject?: string };
    nightly: undefined;
  };
};

const app = createApp<Mail>();

// Accepted: the handler's args come from the declaration; defers check them.
const sendMail = app.task('sendMail', { queue: 'mail' }, async (args, ctx) => {
  args.to satisfies string;
  ctx.job.id satisfies string;
});
sendMail satisfies Task<{ to: string; subject?: string }>;
await sendMail.defer({ to: 'a@example.com' });
await sendMail.deferMany([{ args: { to: 'b@example.com' }, lock: 'user:1' }]);
await app.defer('sendMail', { to: 'a@example.com', subject: 'hi' }, { delay: { minutes: 5 } });
await app.defer(sendMail, { to: 'a@example.com' });
app.task('nightly', {}, async () => {});
await app.defer('nightly'); // args may be left out where the declaration allows undefined
const waited = await sendMail.deferAndWait<{ id: string }>(
  { to: 'a@example.com' },
  { timeout: { seconds: 5 } },
);
waited.id satisfies string;
await app.deferAndWait('sendMail', { to: 'a@example.com' }, { pollInterval: 500 });
await app.deferAndWait(sendMail, { to: 'a@example.com' });
await app.deferAndWait('nightly');

// Refused: undeclared names, wrong args, a handler that expects other args.
// @ts-expect-error sendSms is not declared
app.task('sendSms', {}, async () => {});
// @ts-expect-error sendSms is not declared
await app.defer('sendSms', {});
// @ts-expect-error to is a string
await app.defer('sendMail', { to: 1 });
// @ts-expect-error args are required for sendMail
await app.defer('sendMail');
// @ts-expect-error cc is not part of sendMail's args
await app.defer('sendMail', { to: 'a', cc: 'b' });
// @ts-expect-error to is a string
await app.defer(sendMail, { to: 1 });
// @ts-expect-error to is a string
await sendMail.defer({ to: 1 });
// @ts-expect-error to is a string
await app.deferAndWait('sendMail', { to: 1 });
// @ts-expect-error deferAndWait takes no client
await sendMail.deferAndWait({ to: 'a' }, { client: app as never });
// @ts-expect-error the handler must accept sendMail's args
app.task('sendMail', {}, async (args: { to: number }) => args);

// A schema for a declared task must produce its args.
declare const mailSchema: StandardSchemaV1<unknown, { to: string }>;
declare const numberSchema: StandardSchemaV1<unknown, number>;
app.task('sendMail', { schema: mailSchema }, async () => {});
// @ts-expect-error a schema producing numbers does not fit sendMail
app.task('sendMail', { schema: numberSchema }, async () => {});

// The escape hatch, as for events: an undeclared task through the plain App.
(app as App).task('adhoc', {}, async () => {});
await (app as App).defer('adhoc', { anything: true });

// Untyped apps: as before, and a schema gives an untyped task its args type.
const plain = createApp();
const byHand = plain.task('by-hand', {}, async (args: { n: number }) => args.n);
await byHand.defer({ n: 1 });
// @ts-expect-error n is a number
await byHand.defer({ n: 'one' });
await plain.defer('anything', { goes: true });
const fromSchema = plain.task('from-schema', { schema: mailSchema }, async (args) => {
  args.to satisfies string;
});
await fromSchema.defer({ to: 'x' });
