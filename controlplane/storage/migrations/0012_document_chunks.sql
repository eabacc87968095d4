-- Retrieval over a session's documents: their chunks, each with its sentence embedding
-- (all-MiniLM-L6-v2, 384 dimensions) for pgvector and its words for PostgreSQL's full-text search,
-- ranked together. A chunk belongs to its session and user and goes with them.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') THEN
        RAISE EXCEPTION 'this PostgreSQL has no pgvector extension, which retrieval over documents needs: install it (Debian: postgresql-16-pgvector; Docker: the pgvector/pgvector:pg16 image), then start the control plane again';
    END IF;
END $$;
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE document_chunks (
    id          bigserial PRIMARY KEY,
    session_id  text NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    owner       text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    file        text NOT NULL,
    chunk_index integer NOT NULL,
    text        text NOT NULL,
    embedding   vector(384) NOT NULL,
    words       tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED,
    UNIQUE (session_id, file, chunk_index)
);
CREATE INDEX document_chunks_words ON document_chunks USING gin (words);
CREATE INDEX document_chunks_owner ON document_chunks (owner, session_id);
