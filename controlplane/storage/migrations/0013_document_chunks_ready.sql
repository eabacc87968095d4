-- A chunk is searched once its index is whole: a runner that dies half-way through indexing leaves
-- chunks that no chat finds until the retried job has indexed every document again.
ALTER TABLE document_chunks ADD COLUMN ready boolean NOT NULL DEFAULT false;
