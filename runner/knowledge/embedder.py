"""Sentence embeddings of document chunks and of questions, for retrieval: all-MiniLM-L6-v2
(model_setup/minilm.py), each text's token vectors averaged over its tokens and scaled to unit
length, as sentence-transformers computes them for this model (its pooling settings), so a dot
product is the cosine similarity that pgvector ranks by."""
from __future__ import annotations

import threading
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


_loaded: dict[str, Embedder] = {}
_loading = threading.Lock()
_using = threading.Lock()


class NoEmbedder(Exception):
    """This runner has no sentence-embedding model: retrieval cannot run here."""


def shared_embedder(model_dir: str) -> Embedder:
    """The worker process's one embedder (loaded on first use: a few seconds on a CPU), with a
    lock around it: its threads embed one batch at a time."""
    if not model_dir or not Path(model_dir, "config.json").is_file():
        raise NoEmbedder(f"this runner has no sentence-embedding model at {model_dir or '(unset)'!r}:"
                         " run `make setup`, or set HELIX_EMBEDDING_MODEL_PATH")
    with _loading:
        if model_dir not in _loaded:
            _loaded[model_dir] = Embedder(model_dir)
        return _loaded[model_dir]


def embed(model_dir: str, texts: list[str]) -> list[list[float]]:
    """`texts` embedded by the process's embedder, one caller at a time."""
    embedder = shared_embedder(model_dir)
    with _using:
        return embedder.embed(texts)
