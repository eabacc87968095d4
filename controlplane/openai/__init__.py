"""The OpenAI-compatible API: chat completions, what its bodies may hold, files, and fine-tuning
jobs."""
