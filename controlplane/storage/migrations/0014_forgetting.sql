-- Adapters whose session (or user) was deleted, in the order they were forgotten, by their name on
-- a runner (shared.finetune.adapter_name). Each runner reports the last one it has deleted from its
-- disks and model servers (runners.forgotten_seen) and is told the rest when it next registers, so a
-- runner that was away when a user was deleted forgets their adapters when it comes back.
CREATE TABLE forgotten_adapters (
    seq        bigserial PRIMARY KEY,
    name       text NOT NULL,
    forgotten  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE runners ADD COLUMN forgotten_seen bigint NOT NULL DEFAULT 0;

-- A deleted user's usage is deleted with them, or kept with no trace of who it was
-- (HELIX_DELETED_USER_USAGE=anonymise): kept rows then name no user, so they cannot follow one.
ALTER TABLE usage_records DROP CONSTRAINT IF EXISTS usage_records_owner_fkey;
