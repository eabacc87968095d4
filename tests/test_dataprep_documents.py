"""Document extraction, the URL fetcher's address checks and limits, sentence splitting and
token-sized chunking for text fine-tuning. No network beyond 127.0.0.1, no services."""
from __future__ import annotations

import io
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runner.dataprep.chunking import split_into_chunks, split_into_sentences
from runner.dataprep.documents import (SUPPORTED_EXTENSIONS, DocumentError, extract_fetched, extract_text,
                                       extract_url_field, normalise_whitespace)
from runner.dataprep.url_fetcher import FetchError, UrlFetcher, is_public_address, resolve_public

TINY_CHAT = Path(__file__).resolve().parent.parent / ".helix" / "models" / "tiny-chat"


# --- building real documents -------------------------------------------------------------------

def make_pdf(pages: list[list[str]]) -> bytes:
    """A minimal valid PDF: one page per entry, each line drawn in Helvetica (an empty list is a
    page with no text, like a scan without OCR)."""
    count = len(pages)
    objects = {1: b"<< /Type /Catalog /Pages 2 0 R >>",
               2: b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(count))
                  + b"] /Count %d >>" % count,
               3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"}
    for i, lines in enumerate(pages):
        page, content = 4 + 2 * i, 5 + 2 * i
        objects[page] = (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                         b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % content)
        ops = [b"BT /F1 12 Tf 14 TL 72 720 Td"]
        for line in lines:
            escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(b"(" + escaped.encode("latin-1") + b") Tj T*")
        ops.append(b"ET")
        stream = b"\n".join(ops) if lines else b""
        objects[content] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for number in sorted(objects):
        out += b"%010d 00000 n \n" % offsets[number]
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def make_docx() -> bytes:
    import docx

    document = docx.Document()
    document.add_heading("Quarterly report", level=1)
    document.add_paragraph("Revenue grew by 12 percent.")
    table = document.add_table(rows=2, cols=3)
    table.cell(0, 0).text = "Region"
    table.cell(0, 1).text = "Sales"
    table.cell(0, 2).text = "Notes"
    table.cell(1, 0).text = "North"
    merged = table.cell(1, 1).merge(table.cell(1, 2))
    merged.text = "Forty units"
    document.add_paragraph("Closing remarks after the table.")
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


# --- extraction --------------------------------------------------------------------------------

def test_pdf_text_layer_is_extracted_page_by_page():
    pdf = make_pdf([["The capital of France is Paris.", "It lies on the Seine (a river)."],
                    ["Second page text."]])
    text = extract_text("report.PDF", pdf)
    assert "The capital of France is Paris." in text
    assert "It lies on the Seine (a river)." in text
    assert text.endswith("Second page text.")
    assert "\n\n" in text  # pages are paragraphs


def test_pdf_without_text_layer_is_reported_as_scanned():
    with pytest.raises(DocumentError) as error:
        extract_text("scan.pdf", make_pdf([[]]))
    assert "scan.pdf" in str(error.value)
    assert "looks scanned: no text layer; run OCR first" in str(error.value)


def test_broken_pdf_is_an_error_not_a_crash():
    with pytest.raises(DocumentError, match=r"broken\.pdf: not a readable PDF"):
        extract_text("broken.pdf", b"%PDF-1.4\nthis is not really a pdf")


def test_docx_paragraphs_and_table_cells_in_document_order():
    text = extract_text("report.docx", make_docx())
    assert text.split("\n\n") == ["Quarterly report", "Revenue grew by 12 percent.",
                                  "Region | Sales | Notes", "North | Forty units",
                                  "Closing remarks after the table."]


@pytest.mark.parametrize("data", [b"just some text, not a zip", b"PK\x03\x04garbage"])
def test_invalid_docx_is_rejected(data):
    with pytest.raises(DocumentError, match=r"fake\.docx: not a valid \.docx"):
        extract_text("fake.docx", data)


def test_html_drops_scripts_styles_navigation_and_keeps_paragraphs():
    html = b"""<!DOCTYPE html><html><head><title>Page title</title><style>p {color: red}</style>
    <script>var secret = "do not train on me";</script></head>
    <body><nav><a href="/">Home</a> <a href="/about">About</a></nav>
    <h1>Heading</h1><p>First   paragraph with <b>bold</b> text.</p><!-- a comment -->
    <p>Second<br>line &amp; more.</p><script>alert("nope")</script>
    <table><tr><td>cell one</td><td>cell two</td></tr></table></body></html>"""
    text = extract_text("page.html", html)
    assert text == ("Heading\n\nFirst paragraph with bold text.\n\nSecond line & more."
                    "\n\ncell one cell two")
    for hidden in ("secret", "nope", "color", "Home", "Page title", "comment"):
        assert hidden not in text


def test_markdown_keeps_headings_and_items_apart_and_collapses_spaces():
    md = "# Title\nIntro   text\nwrapped.\n- item one\n- item two\n\n\n\nLast\tparagraph.  ".encode()
    assert extract_text("notes.md", md) == \
        "# Title\n\nIntro text wrapped.\n\n- item one\n\n- item two\n\nLast paragraph."


def test_text_decodes_utf8_with_bom_and_falls_back_to_latin1():
    assert extract_text("a.txt", "\ufeffcafé crème".encode("utf-8")) == "café crème"
    assert extract_text("b.txt", "café crème".encode("latin-1")) == "café crème"
    assert extract_text("c.txt", b"a\r\nb\r\n\r\nc") == "a b\n\nc"
    assert extract_text("d.txt", b"\x93Smart\x94 quotes \x96 Windows") == "\u201cSmart\u201d quotes \u2013 Windows"
    assert extract_text("e.txt", "Notepad’s UTF-16".encode("utf-16")) == "Notepad’s UTF-16"


@pytest.mark.parametrize("text, encoding", [
    ("Привет! Это документ о кошках и собаках, которые живут вместе в одном доме.", "cp1251"),
    ("これは猫と犬についての文書です。彼らは一緒に住んでいます。", "shift_jis"),
    ("The naïve café served crème brûlée — delicious.", "cp1252"),
])
def test_text_in_a_legacy_code_page_is_read_in_it(text, encoding):
    """Found by charset_normalizer: Windows-1252 alone turned Russian and Japanese into mojibake."""
    assert extract_text("legacy.txt", text.encode(encoding)) == text


def test_empty_whitespace_and_markup_only_files_are_rejected():
    with pytest.raises(DocumentError, match=r"empty\.txt: the file is empty"):
        extract_text("empty.txt", b"")
    with pytest.raises(DocumentError, match=r"blank\.md: no text in it"):
        extract_text("blank.md", b" \n\n\t ")
    with pytest.raises(DocumentError, match=r"bare\.html: no text in it"):
        extract_text("bare.html", b"<html><head><title>t</title></head><body> </body></html>")


def test_binary_content_is_rejected_for_text_types():
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10"
    with pytest.raises(DocumentError, match=r"image\.txt: binary content \(NUL bytes\)"):
        extract_text("image.txt", png)
    noise = random.Random(7).randbytes(4000).replace(b"\x00", b"\x01")
    with pytest.raises(DocumentError, match=r"noise\.md: binary content \(too many unprintable"):
        extract_text("noise.md", noise)
    with pytest.raises(DocumentError, match="binary content"):
        extract_text("noise.html", noise)


@pytest.mark.parametrize("name", ["photo.png", "archive.tar.gz", "README", "slides.pptx", ".txt"])
def test_unsupported_extension_lists_the_supported_ones(name):
    with pytest.raises(DocumentError) as error:
        extract_text(name, b"hello")
    message = str(error.value)
    assert message.startswith(f"{name}: unsupported file type")
    assert all(ext in message for ext in SUPPORTED_EXTENSIONS)


def test_normalise_whitespace_keeps_only_paragraph_breaks():
    assert normalise_whitespace("  a \t b\nc\n \n\n  d  \r\n\r\ne ") == "a b c\n\nd\n\ne"


def test_fetched_content_is_extracted_by_content_type():
    pdf = make_pdf([["Fetched PDF text."]])
    assert extract_fetched("http://x/doc", "application/pdf", pdf) == "Fetched PDF text."
    assert extract_fetched("http://x/p", "text/html; charset=utf-8", b"<p>Hi</p><script>x</script>") == "Hi"
    assert extract_fetched("http://x/p", "text/plain; charset=latin-1", "é".encode("latin-1")) == "é"
    assert extract_fetched("http://x/a.pdf", "application/octet-stream", pdf) == "Fetched PDF text."
    with pytest.raises(DocumentError, match="unsupported content type 'image/png'"):
        extract_fetched("http://x/img", "image/png", b"\x89PNG")


# --- addresses ---------------------------------------------------------------------------------

@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1",
                                     "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1",
                                     "240.0.0.1", "::1", "::", "fe80::1%eth0", "fc00::1",
                                     "::ffff:127.0.0.1", "::ffff:169.254.169.254", "2002:7f00:1::",
                                     "64:ff9b::a9fe:a9fe", "ff02::1"])
def test_non_public_addresses_are_not_public(address):
    assert not is_public_address(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:2800:220:1:248:1893:25c8:1946",
                                     "::ffff:93.184.216.34", "64:ff9b::5db8:d822"])
def test_public_addresses_are_public(address):
    assert is_public_address(address)


@pytest.mark.parametrize("host", ["127.0.0.1", "10.0.0.1", "169.254.169.254", "::1",
                                  "::ffff:127.0.0.1", "localhost", "127.1", "2130706433"])
def test_resolve_public_refuses_hosts_that_resolve_to_private_addresses(host):
    with pytest.raises(FetchError, match="refused: resolves to"):
        resolve_public(host)


def test_resolve_public_accepts_a_public_literal():
    assert resolve_public("93.184.216.34", 443) == ["93.184.216.34"]


# --- fetching from a local server --------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    PDF = make_pdf([["A PDF served over HTTP."]])

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, status, body=b"", content_type="text/plain", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in headers:
            self.send_header(name, value)
        if not any(name == "Content-Length" for name, _ in headers):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        port = self.server.server_address[1]
        routes = {
            "/page.html": lambda: self._send(200, b"<p>Served page.</p><script>hidden()</script>",
                                             "text/html; charset=utf-8"),
            "/doc": lambda: self._send(200, self.PDF, "application/pdf"),
            "/host": lambda: self._send(200, self.headers["Host"].encode()),
            "/redirect": lambda: self._send(302, headers=[("Location", "/page.html")]),
            "/to-metadata": lambda: self._send(302, headers=[("Location", "http://169.254.169.254/latest/")]),
            "/to-localhost": lambda: self._send(302, headers=[("Location", f"http://localhost:{port}/page.html")]),
            "/loop": lambda: self._send(302, headers=[("Location", "/loop")]),
            "/missing": lambda: self._send(404, b"no"),
            "/declared-big": lambda: self._send(200, b"x" * 100, headers=[("Content-Length", "5000")]),
        }
        if self.path in routes:
            routes[self.path]()
        elif self.path == "/big":  # no Content-Length: the body is read until it is too long
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            try:
                for _ in range(50):
                    self.wfile.write(b"y" * 1000)
            except OSError:
                pass
        elif self.path == "/trickle":  # headers at once, then a byte every 0.1 s for 4 s
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            try:
                for _ in range(40):
                    self.wfile.write(b"z")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
        else:
            self._send(404, b"unknown")


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _LoopbackIsPublic(UrlFetcher):
    """Treats 127.0.0.1 as if it were a public address (a stand-in for an outside server), and
    checks every other host as usual, so redirects can be tested without leaving the machine."""

    def _address(self, url, host, port):
        return "127.0.0.1" if host in ("127.0.0.1", "pinned.invalid") else super()._address(url, host, port)


def test_loopback_is_refused_by_default(server):
    with pytest.raises(FetchError) as error:
        UrlFetcher().fetch(server + "/page.html")
    assert str(error.value).startswith(server + "/page.html: refused: resolves to 127.0.0.1")


def test_allow_private_fetches_from_loopback(server):
    content_type, body = UrlFetcher(allow_private=True).fetch(server + "/page.html")
    assert content_type.startswith("text/html")
    assert body.startswith(b"<p>Served page.</p>")


def test_redirects_are_followed_and_every_hop_is_checked(server):
    fetcher = _LoopbackIsPublic()
    assert fetcher.fetch(server + "/redirect")[1].startswith(b"<p>Served page.</p>")
    with pytest.raises(FetchError, match=r"http://169\.254\.169\.254/latest/: refused"):
        fetcher.fetch(server + "/to-metadata")
    with pytest.raises(FetchError, match=r"http://localhost:\d+/page\.html: refused"):
        fetcher.fetch(server + "/to-localhost")
    with pytest.raises(FetchError, match=r"too many redirects \(more than 2\)"):
        _LoopbackIsPublic(max_redirects=2).fetch(server + "/loop")


def test_the_connection_goes_to_the_checked_address_with_the_original_host(server):
    port = server.rsplit(":", 1)[1]
    # "pinned.invalid" is never looked up: the fetcher connects to the address it checked.
    _, body = _LoopbackIsPublic().fetch(f"http://pinned.invalid:{port}/host")
    assert body == f"pinned.invalid:{port}".encode()


def test_size_cap_stops_the_download(server):
    fetcher = UrlFetcher(allow_private=True, max_bytes=10_000)
    with pytest.raises(FetchError, match="larger than 10000 bytes"):
        fetcher.fetch(server + "/big")
    with pytest.raises(FetchError, match=r"larger than 1000 bytes \(5000\)"):
        UrlFetcher(allow_private=True, max_bytes=1000).fetch(server + "/declared-big")
    assert len(UrlFetcher(allow_private=True, max_bytes=60_000).fetch(server + "/big")[1]) == 50_000


def test_overall_deadline_stops_a_trickling_server(server):
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"trickle: timed out after 0\.5 s"):
        UrlFetcher(allow_private=True, timeout=0.5).fetch(server + "/trickle")
    assert time.monotonic() - started < 2.0


def test_http_errors_are_reported(server):
    with pytest.raises(FetchError, match=r"/missing: HTTP 404"):
        UrlFetcher(allow_private=True).fetch(server + "/missing")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/file.txt",
                                 "gopher://127.0.0.1/", "javascript:alert(1)", "http:///no-host",
                                 "http://example.com:99999/"])
def test_only_http_and_https_urls_with_a_host_are_fetched(url):
    with pytest.raises(FetchError) as error:
        UrlFetcher(allow_private=True).fetch(url)
    assert str(error.value).startswith(url + ": ")


def test_url_file_fetches_each_line_and_extracts_by_content_type(server):
    links = f"# sources\n{server}/page.html\n\n{server}/doc\n".encode()
    fetcher = UrlFetcher(allow_private=True)
    assert extract_text("links.url", links, fetcher=fetcher) == "Served page.\n\nA PDF served over HTTP."
    shortcut = f"[InternetShortcut]\r\nURL={server}/doc\r\nIconIndex=0\r\n".encode()
    assert extract_text("shortcut.url", shortcut, fetcher=fetcher) == "A PDF served over HTTP."
    with pytest.raises(DocumentError, match=r"^links\.url: http://127\.0\.0\.1:\d+/page\.html: refused"):
        extract_text("links.url", links)  # the default fetcher refuses loopback
    with pytest.raises(DocumentError, match=r"comments\.url: no URL in it"):
        extract_text("comments.url", b"# nothing here\n")


def test_url_field_returns_text_per_url(server):
    results = extract_url_field(f"  {server}/page.html\n{server}/doc ", UrlFetcher(allow_private=True))
    assert results == [(f"{server}/page.html", "Served page."), (f"{server}/doc", "A PDF served over HTTP.")]
    with pytest.raises(DocumentError, match="no URL given"):
        extract_url_field("   ")


# --- sentences ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, sentences", [
    ("Dr. Smith arrived. He was late!  Was he? Yes.",
     ["Dr. Smith arrived.", "He was late!", "Was he?", "Yes."]),
    ("It costs 3.5 dollars, e.g. Paris is dear. Next one.",
     ["It costs 3.5 dollars, e.g. Paris is dear.", "Next one."]),
    ("J. K. Rowling wrote it. The U.S. Army agreed. \"Really?\" she asked. (See Fig. 3.) Then it ended.",
     ["J. K. Rowling wrote it.", "The U.S. Army agreed.", "\"Really?\" she asked.", "(See Fig. 3.)",
      "Then it ended."]),
    ("Version 2.0 shipped in 2023. 40 people came. See i.e. the notes.",
     ["Version 2.0 shipped in 2023.", "40 people came.", "See i.e. the notes."]),
    ("Heading without stop\n\nBody text\nwrapped here. end in lower case. Wait... Done.",
     ["Heading without stop", "Body text wrapped here. end in lower case.", "Wait...", "Done."]),
    ("日本語です。次の文。", ["日本語です。", "次の文。"]),
    ("   ", []),
])
def test_split_into_sentences(text, sentences):
    assert split_into_sentences(text) == sentences


# --- chunks ------------------------------------------------------------------------------------

def words(s: str) -> int:
    return len(s.split())


DOCUMENT = "\n\n".join(
    " ".join(f"Paragraph {p} sentence {s} says fact number {p * 10 + s} clearly." for s in range(7))
    for p in range(12))


def test_chunks_are_bounded_overlapping_whole_words_and_cover_the_text():
    chunks = split_into_chunks(DOCUMENT, words, chunk_tokens=60, overlap_tokens=12)
    assert len(chunks) > 5
    assert all(words(chunk) <= 60 for chunk in chunks)
    assert all(words(chunk) >= 30 for chunk in chunks[:-1])  # filled, not cut early
    source_words = set(DOCUMENT.split())
    assert all(set(chunk.split()) <= source_words for chunk in chunks)
    for before, after in zip(chunks, chunks[1:]):
        last_sentence = split_into_sentences(before)[-1]
        assert after.startswith(last_sentence)  # one whole 9-word sentence fits the overlap
    for sentence in split_into_sentences(DOCUMENT):
        assert any(sentence in chunk for chunk in chunks)
    assert "\n\n" in "".join(chunks)  # paragraph breaks survive inside chunks


def test_chunking_is_deterministic():
    first = split_into_chunks(DOCUMENT, words, chunk_tokens=50, overlap_tokens=10)
    assert first == split_into_chunks(DOCUMENT, words, chunk_tokens=50, overlap_tokens=10)


def test_without_overlap_chunks_partition_the_sentences():
    chunks = split_into_chunks(DOCUMENT, words, chunk_tokens=40, overlap_tokens=0)
    assert sum(len(split_into_sentences(c)) for c in chunks) == len(split_into_sentences(DOCUMENT))
    assert " ".join(" ".join(c.split()) for c in chunks) == " ".join(DOCUMENT.split())


def test_a_sentence_longer_than_a_chunk_is_cut_at_words_with_word_overlap():
    text = " ".join(f"word{i}" for i in range(100))  # one 100-word sentence, no punctuation
    chunks = split_into_chunks(text, words, chunk_tokens=30, overlap_tokens=5)
    assert all(words(c) <= 30 for c in chunks)
    assert all(w.startswith("word") and w[4:].isdigit() for c in chunks for w in c.split())
    for before, after in zip(chunks, chunks[1:]):
        assert before.split()[-5:] == after.split()[:5]
    assert chunks[-1].split()[-1] == "word99"


def test_a_word_longer_than_a_chunk_stands_alone():
    def characters(s: str) -> int:
        return len(s)
    long_word = "x" * 50
    chunks = split_into_chunks(f"short words here {long_word} and after", characters,
                               chunk_tokens=20, overlap_tokens=4)
    assert long_word in chunks
    assert all(len(c) <= 20 for c in chunks if c != long_word)


def test_separators_that_cost_tokens_are_counted():
    def expensive_breaks(s: str) -> int:  # a tokenizer that spends 5 tokens on a paragraph break
        return len(s.split()) + 5 * s.count("\n\n")
    chunks = split_into_chunks(DOCUMENT, expensive_breaks, chunk_tokens=70, overlap_tokens=10)
    assert all(expensive_breaks(c) <= 70 for c in chunks)


def test_empty_text_has_no_chunks():
    assert split_into_chunks(" \n\n ", words) == []


@pytest.mark.parametrize("chunk_tokens, overlap_tokens", [(0, 0), (10, 10), (10, 11), (10, -1), (10.5, 2)])
def test_invalid_sizes_are_rejected(chunk_tokens, overlap_tokens):
    with pytest.raises(ValueError):
        split_into_chunks("some text", words, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)


@pytest.mark.skipif(not TINY_CHAT.is_dir(), reason="the tiny chat model is not built (make setup)")
def test_chunks_sized_by_a_real_tokenizer():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TINY_CHAT))

    def count(s: str) -> int:
        return len(tokenizer.encode(s, add_special_tokens=False))

    chunks = split_into_chunks(DOCUMENT, count, chunk_tokens=128, overlap_tokens=24)
    sizes = [count(c) for c in chunks]
    assert len(chunks) > 3
    assert max(sizes) <= 128
    assert min(sizes[:-1]) >= 64
    source_words = set(DOCUMENT.split())
    assert all(set(c.split()) <= source_words for c in chunks)
    for before, after in zip(chunks, chunks[1:]):
        # Each sentence here is ~27 tokens, over the 24-token overlap: the last words are carried.
        shared = max(k for k in range(len(after.split()) + 1)
                     if before.split()[len(before.split()) - k:] == after.split()[:k])
        assert 12 <= count(" ".join(after.split()[:shared])) <= 24
    assert chunks == split_into_chunks(DOCUMENT, count, chunk_tokens=128, overlap_tokens=24)
