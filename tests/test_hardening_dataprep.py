"""Data preparation of text fine-tunes held to bounds (issue 25, items 4-6): a document past the
runner's characters limit is cut and says so while its neighbours go on, a .docx that would
inflate past the limit is refused at the door (and by the runner's reader, which does not trust
the archive's directory), and a cancel stops reading and chunking within seconds."""
from __future__ import annotations

import io
import random
import time
import zipfile

import pytest
import requests

from conftest import TEXT_MODEL, hold_job, runner_auth, wait_for_session
from runner.dataprep.documents import DocumentError, ReadLimits, extract_text
from shared.finetune import DOCUMENT_MAX_INFLATED_BYTES

RUNNER_MAX_CHARS = 1_000_000  # the runner's default HELIX_DATAPREP_MAX_DOCUMENT_CHARS
FACT = "The Zorblat Library on Kelvar Island was founded in 1847 by Mira Tessel."


def _filler(chars: int) -> str:
    """`chars` characters of three-word sentences: chunked like any text, but too short to be
    facts, so no question is written about them (the test costs reading and chunking only)."""
    words = ["alpha", "brick", "cedar", "delta", "ember", "fjord", "grove", "harbor"]
    rnd, parts, n = random.Random(7), [], 0
    while n < chars:
        parts.append(" ".join(rnd.choice(words) for _ in range(3)).capitalize() + ".")
        n += len(parts[-1]) + 1
    return " ".join(parts)[:chars]


def _docx(member_bytes: int) -> bytes:
    """A small .docx whose document part inflates to `member_bytes` (zeros compress ~1000:1)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open("word/document.xml", "w") as member:
            block = b"\0" * (1 << 20)
            for _ in range(member_bytes >> 20):
                member.write(block)
    return out.getvalue()


def _system(session: dict) -> dict:
    return [i for i in session["interactions"] if i["creator"] == "system"][-1]


def _create(live_server, user, files, **fields) -> requests.Response:
    return requests.post(f"{live_server}/api/v1/sessions", headers=user.headers, timeout=60,
                         data={"mode": "finetune", "type": "text", "model_name": TEXT_MODEL,
                               "manually_review_questions": "yes", **fields},
                         files=[("files", (name, content)) for name, content in files])


@pytest.mark.timeout(600)
def test_a_document_over_the_characters_limit_is_cut_and_its_neighbour_goes_on(live_server, runner, live_user):
    """Was: the control plane refused the report of a document over 1,000,000 characters, RQ
    retried the whole job three times and the session failed with every good document in it."""
    big = _filler(RUNNER_MAX_CHARS + 200_000)
    r = _create(live_server, live_user, [("big.txt", big.encode()), ("facts.txt", FACT.encode())],
                chunk_tokens="2048")
    assert r.status_code == 201, r.text
    session = wait_for_session(live_server, live_user, r.json()["id"], timeout=500,
                               until=lambda s: _system(s)["state"] in ("editing", "error"))
    system = _system(session)
    assert system["state"] == "editing", system["error"]
    cut, facts = system["data_prep_files"]["big.txt"], system["data_prep_files"]["facts.txt"]
    assert RUNNER_MAX_CHARS - 20 <= cut["chars"] <= RUNNER_MAX_CHARS and len(cut["chunks"]) > 1
    assert f"cut at {RUNNER_MAX_CHARS} characters" in cut["error"]
    assert "HELIX_DATAPREP_MAX_DOCUMENT_CHARS" in cut["error"]
    assert not facts["error"] and facts["chars"] == len(FACT)
    # Its one chunk went to question writing (the tiny random model's questions may all be filtered).
    assert [c["attempts"] for c in facts["chunks"]] == [1]


def test_the_door_refuses_a_docx_that_inflates_past_the_limit(live_server, live_user):
    bomb = _docx(DOCUMENT_MAX_INFLATED_BYTES + (1 << 20))
    assert len(bomb) < 200_000
    before = requests.get(f"{live_server}/api/v1/sessions", headers=live_user.headers, timeout=10).json()
    r = _create(live_server, live_user, [("report.docx", bomb), ("facts.txt", FACT.encode())])
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "report.docx" in error and str(DOCUMENT_MAX_INFLATED_BYTES) in error
    assert "HELIX_MAX_DOCUMENT_INFLATED_BYTES" in error
    after = requests.get(f"{live_server}/api/v1/sessions", headers=live_user.headers, timeout=10).json()
    assert after == before  # nothing stored


def test_the_runner_reader_holds_to_its_own_inflated_limit():
    """A .docx fetched from a URL never passed the door, and a directory may lie: the runner's
    reader refuses what the directory declares past its limit, and zipfile inflates no member
    past what the directory declares (a lie ends in a CRC error, not in memory)."""
    with pytest.raises(DocumentError, match="HELIX_DATAPREP_MAX_DOCUMENT_BYTES"):
        extract_text("big.docx", _docx(8 << 20), limits=ReadLimits(max_bytes=4 << 20))
    lying = bytearray(_docx(8 << 20))
    for signature, offset in ((b"PK\x01\x02", 24), (b"PK\x03\x04", 22)):  # its size: "1,000 bytes"
        at = lying.rfind(signature)
        lying[at + offset:at + offset + 4] = (1000).to_bytes(4, "little")
    with pytest.raises(DocumentError, match="not a valid .docx"):
        extract_text("lying.docx", bytes(lying), limits=ReadLimits(max_bytes=4 << 20))


@pytest.mark.timeout(300)
def test_cancel_stops_reading_and_chunking_within_seconds(live_server, runner, live_user):
    """Was: the text worker went on chunking a large document for minutes after the cancel."""
    r = _create(live_server, live_user, [("long.txt", _filler(RUNNER_MAX_CHARS).encode())], chunk_tokens="64")
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    system = _system(wait_for_session(live_server, live_user, sid, timeout=120,
                                      until=lambda s: _system(s)["status"].startswith("reading document")))
    started = time.monotonic()
    assert requests.post(f"{live_server}/api/v1/sessions/{sid}/cancel", headers=live_user.headers,
                         timeout=10).status_code == 200
    stopped = f"data preparation of {system['id']} stopped"
    runner.wait_for_log(stopped, timeout=60)
    took = time.monotonic() - started
    turn = _system(requests.get(f"{live_server}/api/v1/sessions/{sid}", headers=live_user.headers, timeout=10).json())
    assert (turn["state"], turn["status"]) == ("error", "cancelled")
    assert "long.txt" not in turn["data_prep_files"], "stopped only after chunking the whole document"
    assert took < 5, f"the runner stopped {took:.1f} s after the cancel"


def test_the_control_plane_takes_the_report_of_a_document_of_any_length(client, user, api_runner_token):
    """A runner whose operator raised HELIX_DATAPREP_MAX_DOCUMENT_CHARS reports longer documents:
    the report was refused ("chars must be a whole number") past 1,000,000."""
    headers = runner_auth(api_runner_token, "r-long")
    assert client.post("/api/v1/runner/register", headers=headers,
                       json={"runner_id": "r-long", "models": {"text": []}}).status_code == 200
    s = client.post("/api/v1/sessions", headers=user.headers, content_type="multipart/form-data",
                    data={"mode": "finetune", "type": "text", "files": (io.BytesIO(FACT.encode()), "a.txt")}).json
    sid, iid = s["id"], s["interactions"][-1]["id"]
    hold_job(client.application.config["HELIX"].redis_url, iid, "r-long", stage="dataprep", kind="text-dataprep")
    r = client.post(f"/api/v1/runner/sessions/{sid}/interactions/{iid}/finetune/document", headers=headers,
                    json={"document": "a.txt", "chars": 1_500_000, "chunks": 3})
    assert r.status_code == 200, r.json  # was 400
    turn = client.get(f"/api/v1/sessions/{sid}", headers=user.headers).json["interactions"][-1]
    assert turn["data_prep_files"]["a.txt"]["chars"] == 1_500_000
