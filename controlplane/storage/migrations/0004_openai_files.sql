-- Files uploaded through the OpenAI-compatible API (`POST /v1/files`): the content lies in the
-- owner's filestore at `path`; the row says what it is.
CREATE TABLE openai_files (
    id          text PRIMARY KEY,                   -- file-<hex>
    owner       text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    filename    text NOT NULL,
    purpose     text NOT NULL,
    bytes       bigint NOT NULL,
    examples    integer NOT NULL,
    path        text NOT NULL,
    created     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX openai_files_owner ON openai_files(owner, created DESC, id);

-- Pairs given as chat examples (an OpenAI fine-tuning job) carry their own system message
-- (NULL: the session's, as for pairs made from documents), and a validation file's pairs are the
-- held-out set rather than a share of the others.
ALTER TABLE qa_pairs ADD COLUMN system_prompt text;
ALTER TABLE qa_pairs ADD COLUMN held_out boolean NOT NULL DEFAULT false;
