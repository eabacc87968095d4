-- Plans: named sets of limits (a JSON object of limit name -> positive whole number; a limit not
-- named is unlimited). Every user is on one, `default` (no limits) unless set; a key may be put
-- on a plan of its own too, which then limits it besides its user's plan.
CREATE TABLE plans (
    name        text PRIMARY KEY,
    limits      jsonb NOT NULL DEFAULT '{}',
    created     timestamptz NOT NULL DEFAULT now(),
    updated     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO plans (name) VALUES ('default');
ALTER TABLE users ADD COLUMN plan text NOT NULL DEFAULT 'default' REFERENCES plans(name);
ALTER TABLE api_keys ADD COLUMN plan text REFERENCES plans(name);
CREATE INDEX users_by_plan ON users(plan);
CREATE INDEX queued_work_owner ON queued_work(owner);  -- a plan's concurrent and queued jobs count across queues
-- A held job's place counts its owner's jobs before it by (submitted, interaction_id): an index in
-- that order serves the count (the one it replaces stopped at submitted).
CREATE INDEX queued_work_line ON queued_work(queue, owner, submitted, interaction_id);
DROP INDEX queued_work_by_owner;
