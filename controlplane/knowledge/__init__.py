"""Knowledge beside fine-tuning: a session's documents, chunked and embedded, retrieved for a question."""
