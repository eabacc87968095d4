"""The sentence embeddings that retrieval ranks by (runner/knowledge/embedder.py): the model set-up
unpacked from its wheel, pooled as sentence-transformers pools it, so its similarities are the
model's published ones."""
from __future__ import annotations

import pytest

from model_setup import minilm
from runner.knowledge.embedder import Embedder


@pytest.fixture(scope="module")
def embedder(models_dir) -> Embedder:
    return Embedder(minilm.build(models_dir))


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def test_the_similarities_are_the_models_published_ones(embedder):
    # sentence-transformers' quick start prints these for all-MiniLM-L6-v2: 0.6660, 0.1046, 0.1411.
    weather, sunny, stadium = embedder.embed(
        ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."])
    assert embedder.dimensions == minilm.DIMENSIONS == len(weather)
    assert _dot(weather, weather) == pytest.approx(1.0, abs=1e-5)  # unit length: a dot product is the cosine
    assert _dot(weather, sunny) == pytest.approx(0.6660, abs=0.002)
    assert _dot(weather, stadium) == pytest.approx(0.1046, abs=0.002)
    assert _dot(sunny, stadium) == pytest.approx(0.1411, abs=0.002)


def test_a_batch_gives_each_text_what_it_gets_alone(embedder):
    texts = ["The Zorblat Library was founded in 1847.", "short", "a much longer sentence " * 200]
    together = embedder.embed(texts, batch_size=3)
    for text, vector in zip(texts, together):
        assert _dot(vector, embedder.embed([text])[0]) == pytest.approx(1.0, abs=1e-4)  # padding changes nothing
