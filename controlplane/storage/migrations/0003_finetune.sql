-- Text fine-tunes: the question/answer pairs of a fine-tune interaction, one row each, so they
-- can be listed, reviewed, replaced and regenerated per chunk.
CREATE TABLE qa_pairs (
    id              text PRIMARY KEY,
    interaction_id  text NOT NULL REFERENCES interactions(id) ON DELETE CASCADE,
    seq             integer NOT NULL,
    document        text NOT NULL DEFAULT '',   -- the file (or URL) the pair was made from
    chunk_index     integer NOT NULL DEFAULT 0,
    fact            text NOT NULL DEFAULT '',   -- pairs with one fact key are paraphrases
    style           text NOT NULL DEFAULT '',
    question        text NOT NULL,
    answer          text NOT NULL,
    UNIQUE (interaction_id, seq)
);
CREATE INDEX qa_pairs_chunk ON qa_pairs(interaction_id, document, chunk_index);
