"""The hybrid search over a session's document chunks (controlplane/knowledge/store.py), on the
real PostgreSQL with pgvector and real MiniLM embeddings: a question finds the chunk that answers
it by meaning or by a rare word, only in its own session and user, and the chunks go with their
session."""
from __future__ import annotations

import pytest

from controlplane.knowledge import store
from model_setup import minilm
from runner.knowledge.embedder import Embedder

FACTS = ["The Zorblat Library was founded in 1847 by the cartographer Imelda Vosk.",
         "Its reading room holds eleven thousand maps of coastlines that no longer exist.",
         "Every spring the staff repaint the lighthouse on the library's roof a bright green.",
         "Visitors must leave umbrellas at the door, a rule older than the building itself."]


@pytest.fixture(scope="module")
def embedder(models_dir) -> Embedder:
    return Embedder(minilm.build(models_dir))


def _index(conn, user, session_id: str, embedder: Embedder, texts: list[str], file: str = "zorblat.txt",
           whole: bool = True) -> None:
    store.replace_document(conn, session_id, user.id, file, [
        store.Chunk(i, text, vector) for i, (text, vector) in enumerate(zip(texts, embedder.embed(texts)))])
    if whole:
        store.mark_ready(conn, session_id)


def _session(conn, user) -> str:
    from controlplane.sessions import store as sessions_store

    return sessions_store.insert_session(conn, owner=user.id, mode="inference", type="text",
                                         model_name="m", name="knowledge").id


def test_a_question_finds_its_chunk_by_meaning_or_by_a_rare_word(db, make_user, embedder):
    user = make_user()
    session_id = _session(db, user)
    _index(db, user, session_id, embedder, FACTS)
    ask = lambda q: store.search(db, session_id, user.id, q, embedder.embed([q])[0])  # noqa: E731
    # No word in common but the name: meaning ranks it.
    assert ask("Who started the Zorblat Library, and when?")[0].index == 0
    # Meaning alone: not one content word of the chunk.
    assert ask("What colour is the beacon on top painted each year?")[0].index == 2
    # A rare word the embedding barely knows: full-text search ranks it.
    found = ask("Vosk")
    assert found[0].index == 0 and found[0].score > found[-1].score
    assert -1 <= found[0].similarity <= 1 and len(found) <= 4


def test_chunks_are_found_only_in_their_session_and_go_with_it(db, make_user, embedder):
    owner, other = make_user(), make_user()
    mine, theirs = _session(db, owner), _session(db, other)
    _index(db, owner, mine, embedder, FACTS[:2])
    _index(db, other, theirs, embedder, FACTS[2:])
    question = "When was the library founded?"
    vector = embedder.embed([question])[0]
    assert {f.index for f in store.search(db, mine, owner.id, question, vector)} == {0, 1}
    assert store.search(db, mine, other.id, question, vector) == []  # not their session
    assert {f.text for f in store.search(db, theirs, other.id, question, vector)} == set(FACTS[2:])
    # Indexed again (a retried stage): replaced, not doubled.
    _index(db, owner, mine, embedder, FACTS[:2])
    assert store.count(db, mine, owner.id) == 2
    db.execute("DELETE FROM sessions WHERE id = %s", (mine,))
    assert store.count(db, mine, owner.id) == 0


def test_nothing_of_an_index_is_found_until_it_is_whole(db, make_user, embedder):
    user = make_user()
    session_id = _session(db, user)
    _index(db, user, session_id, embedder, FACTS[:2])
    # A retried index job's first document is in again, its second not yet: the index as it was
    # stays hidden until the job says it is whole.
    _index(db, user, session_id, embedder, FACTS[2:], file="more.txt", whole=False)
    question = "What colour is the lighthouse on the roof?"
    vector = embedder.embed([question])[0]
    assert {f.file for f in store.search(db, session_id, user.id, question, vector)} == {"zorblat.txt"}
    assert store.count(db, session_id, user.id) == 2
    assert store.mark_ready(db, session_id) == 4
    assert store.search(db, session_id, user.id, question, vector)[0].file == "more.txt"
