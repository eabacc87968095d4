"""Retrieval at answer time: the question embedded here, its best chunks found by the control plane
(in the index the session learns from, for the session's owner), and put in the prompt as excerpts
the model is told to answer from. Used by chats and by the knowledge report's evaluation."""
from __future__ import annotations

from typing import Any

from runner.knowledge.embedder import embed
from shared.knowledge import MAX_QUESTIONS_PER_REQUEST, RESULTS_PER_QUESTION
from shared.wire import Question, RetrievalRequest

INSTRUCTION = ("Answer the question using these excerpts of the user's documents when they hold the answer;"
               " otherwise answer from what you know.")


def search(ctx, session_id: str, interaction_id: str, questions: list[str],
           limit: int = RESULTS_PER_QUESTION) -> list[list[dict[str, Any]]]:
    """The best chunks (file, chunk, text, score, similarity) for each question, best first."""
    found: list[list[dict[str, Any]]] = []
    for start in range(0, len(questions), MAX_QUESTIONS_PER_REQUEST):
        batch = questions[start:start + MAX_QUESTIONS_PER_REQUEST]
        vectors = embed(ctx.config.embedding_model_path, batch)
        found += ctx.client.retrieve(session_id, interaction_id, RetrievalRequest(
            questions=[Question(text=q[:20_000], embedding=v) for q, v in zip(batch, vectors)], limit=limit))
    return found


def excerpts_prompt(found: list[dict[str, Any]]) -> str:
    """The system prompt's part that carries the excerpts, each headed by where it comes from."""
    parts = [f"[{n}] {f['file']}, chunk {f['chunk']}:\n{f['text']}" for n, f in enumerate(found, 1)]
    return INSTRUCTION + "\n\n" + "\n\n".join(parts)


def grounded(system_prompt: str, found: list[dict[str, Any]]) -> str:
    """A system prompt with the excerpts after it (the prompt alone when nothing was found)."""
    return "\n\n".join(p for p in (system_prompt, excerpts_prompt(found) if found else "") if p)


def with_excerpts(messages: list[dict[str, str]], found: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The chat with the excerpts in its system message (after the session's own, if it has one)."""
    if not found:
        return messages
    own = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    return [{"role": "system", "content": grounded(own or "", found)}, *messages[1 if own is not None else 0:]]


def citations(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the reply's metadata tells of the excerpts it was given (not their text)."""
    return [{"file": f["file"], "chunk": f["chunk"], "score": f["score"], "similarity": f["similarity"]}
            for f in found]
