-- Runner tokens can be revoked (kept, not deleted, so listings still say which runners used one),
-- and runners report their state (models held, memory, jobs running, version) every few seconds.
ALTER TABLE runner_tokens ADD COLUMN revoked timestamptz;
ALTER TABLE runners ADD COLUMN state jsonb NOT NULL DEFAULT '{}'::jsonb;
-- `helix runners tokens` counts each token's runners.
CREATE INDEX runners_token ON runners(token_id);
