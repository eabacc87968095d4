-- Users, their API keys (stored as digests), sessions with their interactions in their own
-- table, runner tokens and the runners that announced themselves.
CREATE TABLE users (
    id          text PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    is_admin    boolean NOT NULL DEFAULT false,
    created     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    owner       text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name        text NOT NULL,
    digest      text NOT NULL UNIQUE,
    hint        text NOT NULL,
    created     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_keys_owner ON api_keys(owner, created);

CREATE TABLE sessions (
    id              text PRIMARY KEY,
    name            text NOT NULL DEFAULT '',
    created         timestamptz NOT NULL DEFAULT now(),
    updated         timestamptz NOT NULL DEFAULT now(),
    parent_session  text NOT NULL DEFAULT '',
    mode            text NOT NULL,
    type            text NOT NULL,
    model_name      text NOT NULL,
    lora_dir        text NOT NULL DEFAULT '',
    owner           text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    owner_type      text NOT NULL DEFAULT 'user',
    config          jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX sessions_owner_created ON sessions(owner, created DESC, id);

CREATE TABLE interactions (
    id                text PRIMARY KEY,
    session_id        text NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    seq               integer NOT NULL,
    created           timestamptz NOT NULL DEFAULT now(),
    updated           timestamptz NOT NULL DEFAULT now(),
    scheduled         timestamptz,
    completed         timestamptz,
    creator           text NOT NULL,
    mode              text NOT NULL,
    runner            text NOT NULL DEFAULT '',
    message           text NOT NULL DEFAULT '',
    progress          integer NOT NULL DEFAULT 0,
    files             jsonb NOT NULL DEFAULT '[]'::jsonb,
    finished          boolean NOT NULL DEFAULT false,
    metadata          jsonb NOT NULL DEFAULT '{}'::jsonb,
    state             text NOT NULL,
    status            text NOT NULL DEFAULT '',
    error             text NOT NULL DEFAULT '',
    lora_dir          text NOT NULL DEFAULT '',
    data_prep_chunks  jsonb NOT NULL DEFAULT '{}'::jsonb,
    data_prep_stage   text NOT NULL DEFAULT '',
    UNIQUE (session_id, seq)
);
-- The reconciler looks for unfinished system interactions.
CREATE INDEX interactions_unfinished ON interactions(created) WHERE NOT finished AND creator = 'system';

CREATE TABLE runner_tokens (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    digest      text NOT NULL UNIQUE,
    created     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE runners (
    id          text PRIMARY KEY,
    token_id    text NOT NULL REFERENCES runner_tokens(id) ON DELETE CASCADE,
    models      jsonb NOT NULL DEFAULT '[]'::jsonb,
    info        jsonb NOT NULL DEFAULT '{}'::jsonb,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);
