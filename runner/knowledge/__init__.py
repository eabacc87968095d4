"""Knowledge beside fine-tuning: a session's documents embedded for retrieval."""
