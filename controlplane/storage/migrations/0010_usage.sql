-- Metering: what each finished piece of work used, recorded once (its interaction and stage are
-- the key), against its user, the API key that asked for it, its model and its session. Kept when
-- the session is deleted (it is what a bill is made from); gone with the user.
CREATE TABLE usage_records (
    interaction_id      text NOT NULL,
    stage               text NOT NULL DEFAULT '',
    owner               text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    api_key_id          text,
    session_id          text NOT NULL,
    model               text NOT NULL,
    kind                text NOT NULL,
    prompt_tokens       bigint NOT NULL DEFAULT 0,
    completion_tokens   bigint NOT NULL DEFAULT 0,
    images              integer NOT NULL DEFAULT 0,
    width               integer,
    height              integer,
    steps               integer,
    runner_seconds      double precision NOT NULL DEFAULT 0,
    credits             double precision NOT NULL DEFAULT 0,  -- by the price table when recorded
    recorded            timestamptz NOT NULL DEFAULT now(),
    -- The usage webhook: when the record was delivered (set at once where no webhook is set up),
    -- and when to try again after a failed delivery.
    delivered           timestamptz,
    delivery_attempts   integer NOT NULL DEFAULT 0,
    next_delivery       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (interaction_id, stage)
);
CREATE INDEX usage_records_undelivered ON usage_records(next_delivery) WHERE delivered IS NULL;
CREATE INDEX usage_records_by_owner ON usage_records(owner, recorded);
CREATE INDEX usage_records_by_time ON usage_records(recorded);

-- The key that asked for a job, kept with its place until the job's usage is recorded.
ALTER TABLE queued_work ADD COLUMN api_key_id text;
