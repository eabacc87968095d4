"""Measuring whether a fine-tune learned: scoring model answers against reference answers."""
