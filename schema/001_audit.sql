-- Operator actions (replays, promotions, job retries and cancellations from the CLI
-- or dashboard) are recorded here: who, from where, what, and why.
CREATE TABLE audit_log (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  at timestamptz NOT NULL DEFAULT now(),
  actor text NOT NULL,
  host text NOT NULL,
  action text NOT NULL,
  subject text NOT NULL,
  details jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX audit_log_subject_at ON audit_log (subject, at);
