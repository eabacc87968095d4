"""Data preparation for text fine-tuning: uploaded documents to plain text, then to token-sized chunks."""
