"""Retrieval beside fine-tuning, end to end on a real runner (the tiny chat model, the real MiniLM
embedder, pgvector in the test run's PostgreSQL): a session that only retrieves is ready within
seconds of its upload and cites the chunk that answers each turn, in chats and through its /v1
model; a question in another language that names its subject still finds its chunk; no user reaches another's index;
and too large an index, or no way to learn at all, is refused before any work."""
from __future__ import annotations

import time

import openai
import psycopg
import pytest
import requests
from psycopg.rows import dict_row

from tests.conftest import TEXT_MODEL, _make_user, wait_for_session
from tests.test_usage_limits import _plan, _user_on

# Four paragraphs of invented facts (the index cuts them into three chunks of its own).
PARAGRAPHS = {
    "founding": "The Quillon Observatory stands on the ridge above the town of Marrowick. It was founded in 1893"
                " by the astronomer Odile Farrant, who paid for its copper dome by selling her family's orchard."
                " Farrant ran the observatory for forty years and wrote every entry of its first logbook by hand."
                " Her portrait still hangs beside the entrance, and the town celebrates her birthday each March"
                " with a lantern walk up the ridge road to the observatory gate.",
    "telescope": "The observatory's main telescope is a refractor with a lens of sixty-one centimetres, ground in"
                 " Glasgow and carried up the ridge on an ox cart. Astronomers used it to catalogue more than nine"
                 " hundred variable stars. The tube is painted a deep blue, and the mounting still turns on its"
                 " original brass gears, which the staff oil every Tuesday before the evening viewing sessions"
                 " that are open to schools from the whole valley.",
    "library": "A small library in the observatory's west wing keeps two thousand glass photographic plates of the"
               " night sky. The oldest plate shows a comet seen over Marrowick in the winter of 1901. Visitors may"
               " look at the plates only on the first Saturday of each month, wearing cotton gloves that the"
               " librarian hands out at the door, and nobody is allowed to bring food or drink into the wing.",
    "weather": "Fog covers the ridge on most autumn mornings, so the observatory keeps its own weather station on"
               " the roof. The station has measured the rain every day since 1921 and recorded the coldest night"
               " in the valley's history, minus twenty-four degrees, in January 1963. Its readings are posted on a"
               " chalkboard in the town square every noon by a volunteer from the local school.",
}
DOCUMENT = "\n\n".join(PARAGRAPHS.values())
# What the chunk that answers each question must hold.
ANSWERS = {"founding": "Odile Farrant", "telescope": "sixty-one centimetres", "library": "first Saturday",
           "weather": "minus twenty-four", "plates": "two thousand glass", "tube": "deep blue"}


def _system(session: dict) -> dict:
    return [i for i in session["interactions"] if i["creator"] == "system"][-1]


def _create(live_server, user, files, **fields) -> requests.Response:
    return requests.post(f"{live_server}/api/v1/sessions", headers=user.headers,
                         data={"mode": "finetune", "type": "text", "model_name": TEXT_MODEL, **fields},
                         files=[("files", (name, content)) for name, content in files], timeout=60)


def _ask(live_server, user, sid: str, question: str) -> dict:
    r = requests.put(f"{live_server}/api/v1/sessions/{sid}", headers=user.headers,
                     data={"input": question}, timeout=30)
    assert r.status_code == 200, r.text
    return wait_for_session(live_server, user, sid, timeout=120)["interactions"][-1]


def _cited(db, reply: dict) -> str:
    """The text of the chunk cited first."""
    top = reply["citations"][0]
    assert top["file"] == "quillon.txt" and -1 <= top["similarity"] <= 1 and top["score"] > 0, reply["citations"]
    return db.execute("SELECT c.text FROM document_chunks c JOIN sessions s ON c.session_id ="
                      " s.config->'knowledge'->>'session_id' JOIN interactions i ON i.session_id = s.id"
                      " WHERE i.id = %s AND c.file = %s AND c.chunk_index = %s",
                      (reply["id"], top["file"], top["chunk"])).fetchone()["text"]


def _chunks(db, session_id: str) -> int:
    return db.execute("SELECT count(*) AS n FROM document_chunks WHERE session_id = %s AND ready",
                      (session_id,)).fetchone()["n"]


@pytest.fixture(scope="module")
def indexed(live_server, runner, services):
    """A retrieval-only session of one user's, indexed, and how long after its upload."""
    with psycopg.connect(services["database_url"], row_factory=dict_row, autocommit=True) as conn:
        user = _make_user(conn)
    uploaded = time.monotonic()
    r = _create(live_server, user, [("quillon.txt", DOCUMENT.encode()), ("empty.txt", b"")],
                text_finetune_enabled="no")
    assert r.status_code == 201, r.text
    session = wait_for_session(live_server, user, r.json()["id"], timeout=120,
                               until=lambda s: _system(s)["finished"])
    return user, session, time.monotonic() - uploaded


@pytest.mark.timeout(300)
def test_a_retrieval_only_session_answers_from_its_documents_within_seconds(live_server, indexed, live_db):
    user, session, seconds = indexed
    system = _system(session)
    assert system["state"] == "complete" and system["data_prep_stage"] == "complete", system
    assert seconds < 60, seconds  # no questions written, nothing trained
    assert session["mode"] == "inference" and session["lora_dir"] == ""
    assert session["config"]["knowledge"] == {"session_id": session["id"], "way": "retrieval", "chosen_by": "user"}
    # The empty document failed alone; the other was indexed.
    assert "empty" in system["data_prep_files"]["empty.txt"]["error"]
    chunks = _chunks(live_db, session["id"])
    assert chunks >= 2 and system["knowledge"]["chunks"] == chunks and system["knowledge"]["documents"] == 1
    assert system["status"] == f"ready: chats answer from {chunks} chunks of the documents (1 read, 1 failed)"
    assert system["qa_pairs"] == []

    for question, topic in [("Who founded the Quillon Observatory, and when?", "founding"),
                            ("How large is the lens of the main telescope?", "telescope"),
                            ("When can visitors look at the glass plates?", "library"),
                            ("What was the coldest temperature ever measured there?", "weather")]:
        reply = _ask(live_server, user, session["id"], question)
        assert reply["state"] == "complete", reply
        assert reply["metadata"]["knowledge_way"] == "retrieval" and "adapter" not in reply["metadata"]
        assert ANSWERS[topic] in _cited(live_db, reply), (question, reply["citations"])
        assert len(reply["citations"]) <= 3


@pytest.mark.timeout(300)
def test_a_question_in_another_language_still_finds_its_chunk(live_server, indexed, live_db):
    # The default embedding model is English: the name a question shares with the document carries
    # it (HELIX_EMBEDDING_MODEL_PATH may name a multilingual model of the same size for more).
    user, session, _ = indexed
    for question, topic in [("Qui a fondé l'observatoire Quillon ?", "founding"),
                            ("Wer hat das Quillon-Observatorium gegründet?", "founding")]:
        assert ANSWERS[topic] in _cited(live_db, _ask(live_server, user, session["id"], question)), question


@pytest.mark.timeout(300)
def test_its_model_retrieves_through_v1_and_no_one_else_reaches_the_index(live_server, indexed, make_live_user,
                                                                          live_db):
    user, session, _ = indexed
    model = f"ft:{TEXT_MODEL}:{session['id']}"
    client = openai.OpenAI(base_url=f"{live_server}/v1", api_key=user.key)
    assert model in [m.id for m in client.models.list()]
    response = client.chat.completions.create(model=model, max_tokens=8, messages=[
        {"role": "user", "content": "What colour is the telescope's tube painted?"}])
    call = requests.get(f"{live_server}/api/v1/sessions/{response.session_id}", headers=user.headers).json()
    reply = call["interactions"][-1]
    assert reply["metadata"]["knowledge_way"] == "retrieval" and ANSWERS["tube"] in _cited(live_db, reply)
    # A /v1 chat on the model is not a model of its own.
    assert [m.id for m in client.models.list()].count(model) == 1
    assert not any(response.session_id in m.id for m in client.models.list())

    stranger = make_live_user()
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=f"{live_server}/v1", api_key=stranger.key, max_retries=0).chat.completions.create(
            model=model, max_tokens=4, messages=[{"role": "user", "content": "Who founded it?"}])
    assert requests.get(f"{live_server}/api/v1/sessions/{session['id']}", headers=stranger.headers).status_code == 404


@pytest.mark.timeout(300)
def test_the_index_goes_with_its_session(live_server, runner, make_live_user, live_db):
    user = make_live_user()
    r = _create(live_server, user, [("quillon.txt", DOCUMENT.encode())], text_finetune_enabled="no")
    sid = r.json()["id"]
    wait_for_session(live_server, user, sid, timeout=120, until=lambda s: _system(s)["finished"])
    assert _chunks(live_db, sid) >= 2
    assert requests.delete(f"{live_server}/api/v1/sessions/{sid}", headers=user.headers).status_code == 200
    assert _chunks(live_db, sid) == 0


def test_no_way_to_learn_or_an_unreadable_choice_is_refused(live_server, live_user):
    r = _create(live_server, live_user, [("quillon.txt", DOCUMENT.encode())],
                rag_enabled="no", text_finetune_enabled="no")
    assert r.status_code == 400 and "at least one way" in r.json()["error"], r.text
    r = _create(live_server, live_user, [("quillon.txt", DOCUMENT.encode())], rag_enabled="maybe")
    assert r.status_code == 400 and "rag_enabled" in r.json()["error"], r.text


@pytest.mark.timeout(300)
def test_an_index_too_large_for_the_plan_is_refused_before_work(live_server, runner, live_db):
    from controlplane.accounts import store as accounts

    plan = _plan(live_db, index_chunks=100)
    user = _user_on(live_db, plan)
    r = _create(live_server, user, [("quillon.txt", DOCUMENT.encode())], text_finetune_enabled="no")
    assert r.status_code == 201, r.text
    first = wait_for_session(live_server, user, r.json()["id"], timeout=120, until=lambda s: _system(s)["finished"])
    assert _system(first)["state"] == "complete", _system(first)
    made = _chunks(live_db, first["id"])
    # One chunk of room left: the runner counts the new documents' chunks and embeds none of them.
    live_db.execute("UPDATE plans SET limits = %s WHERE name = %s", (f'{{"index_chunks": {made + 1}}}', plan))
    user = type(user)(user.row, accounts.create_api_key(live_db, user.id, "fresh")[1])  # reads the plan anew
    r = _create(live_server, user, [("a.txt", DOCUMENT.encode()), ("b.txt", DOCUMENT.encode())],
                text_finetune_enabled="no")
    assert r.status_code == 201, r.text
    second = wait_for_session(live_server, user, r.json()["id"], timeout=120, until=lambda s: _system(s)["finished"])
    system = _system(second)
    assert system["state"] == "error" and f"make {2 * made} chunks" in system["error"], system
    assert "may hold 1 " in system["error"] and _chunks(live_db, second["id"]) == 0
    # Room made in the plan, the failed index is retried and made whole.
    live_db.execute("UPDATE plans SET limits = %s WHERE name = %s", (f'{{"index_chunks": {3 * made}}}', plan))
    user = type(user)(user.row, accounts.create_api_key(live_db, user.id, "roomier")[1])
    r = requests.put(f"{live_server}/api/v1/sessions/{second['id']}/finetune/text/retry", headers=user.headers)
    assert r.status_code == 200, r.text
    second = wait_for_session(live_server, user, second["id"], timeout=120, until=lambda s: _system(s)["finished"])
    assert _system(second)["state"] == "complete" and _chunks(live_db, second["id"]) == 2 * made
    # The plan full, the next index is refused at the door, before anything is stored.
    user = type(user)(user.row, accounts.create_api_key(live_db, user.id, "full")[1])
    r = _create(live_server, user, [("quillon.txt", DOCUMENT.encode())], text_finetune_enabled="no")
    assert r.status_code == 429 and r.json()["code"] == "insufficient_quota", r.text
    assert "index_chunks" in r.text
