"""What both sides know of retrieval over a session's documents: the ways a session can learn from
its documents, the embedding's size, and how chunks are cut for the index."""
from __future__ import annotations

from enum import StrEnum


class Way(StrEnum):
    """How a session's chats use its documents. The knowledge report scores each on the held-out
    questions; a session whose user chose none is served the way that scored best."""
    BASE = "base"            # the base model alone: neither
    RETRIEVAL = "retrieval"  # the base model with the best chunks in its prompt
    FINETUNE = "finetune"    # the fine-tuned adapter alone
    BOTH = "both"            # the adapter with the best chunks in its prompt

    @property
    def retrieves(self) -> bool:
        return self in (Way.RETRIEVAL, Way.BOTH)

    @property
    def uses_adapter(self) -> bool:
        return self in (Way.FINETUNE, Way.BOTH)


# all-MiniLM-L6-v2's vectors (model_setup/minilm.py); the column is vector(384).
EMBEDDING_DIMENSIONS = 384
# Chunks of the index, in the embedding model's own tokens: within its 256-token window, so all of a
# chunk counts in its vector, and short enough that three fit a small model's prompt.
INDEX_CHUNK_TOKENS = 160
INDEX_OVERLAP_TOKENS = 32
# The chunks a turn's prompt gets (Helix's rag_settings results_count defaulted to 3).
RESULTS_PER_QUESTION = 3
# Questions one retrieval request may carry (an evaluation asks its held-out questions in batches).
MAX_QUESTIONS_PER_REQUEST = 64
