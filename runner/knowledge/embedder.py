"""Sentence embeddings of document chunks and of questions, for retrieval: all-MiniLM-L6-v2
(model_setup/minilm.py), each text's token vectors averaged over its tokens and scaled to unit
length, as sentence-transformers computes them for this model (its pooling settings), so a dot
product is the cosine similarity that pgvector ranks by."""
from __future__ import annotations

from pathlib import Path

# The model's own limit for a text (sentence_bert_config.json): longer ones are cut there.
MAX_TOKENS = 256


class Embedder:
    """The model loaded once (a worker process keeps it); `embed` is safe from one thread at a time."""

    def __init__(self, model_dir: str | Path, threads: int | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModel.from_pretrained(str(model_dir)).eval()
        self.dimensions = int(self.model.config.hidden_size)

    def embed(self, texts: list[str], batch_size: int = 32) -> list[list[float]]:
        import torch
        import torch.nn.functional as F

        vectors: list[list[float]] = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                       max_length=MAX_TOKENS, return_tensors="pt")
                tokens = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
                pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                vectors += F.normalize(pooled, p=2, dim=1).tolist()
        return vectors
