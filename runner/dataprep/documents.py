"""Plain text out of the documents a user uploads for a text fine-tune (the `extract_text` stage).

The next stages cut the text into chunks and ask a model questions about each, so all we want is
the words, in reading order, with paragraph breaks kept ("\n\n") and every other run of whitespace
collapsed. Anything we cannot turn into real text (an unknown type, an empty or binary file, a
scanned PDF, a broken .docx) fails with a `DocumentError` that names the file and says what to do,
instead of training a model on nothing or on noise.

What reading one document may cost is bounded (`ReadLimits`, from the runner's HELIX_DATAPREP_*
settings): the bytes it takes once inflated (a .docx's members, read from the zip's directory;
Python's zipfile never inflates a member past the size the directory gives it), and the
characters kept (PDF pages and .docx paragraphs stop being read past the limit). A cancelled job
stops between pages, paragraphs and URLs (`ReadLimits.check_stop`).

A `.url` file (one URL per line) and URL form fields are fetched by `UrlFetcher`
(url_fetcher.py), which refuses loopback, private, link-local and other non-public addresses.
"""
from __future__ import annotations

import codecs
import io
import re
import zipfile
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from runner.dataprep.url_fetcher import FetchError, UrlFetcher
from shared.finetune import DOCUMENT_MAX_INFLATED_BYTES

SUPPORTED_EXTENSIONS = (".txt", ".md", ".html", ".htm", ".pdf", ".docx", ".url")
MAX_URLS = 20  # per .url file or form field: each one can take the fetcher's whole timeout

# Elements whose text is not part of the page's content.
_DROPPED_HTML = ("script", "style", "noscript", "template", "nav", "head")
# Elements that start a new paragraph; table cells are only set apart by a space.
_BLOCK_HTML = ("p", "div", "section", "article", "main", "header", "footer", "aside", "h1", "h2",
               "h3", "h4", "h5", "h6", "li", "ul", "ol", "dl", "dt", "dd", "blockquote", "pre",
               "table", "tr", "figure", "figcaption", "hr", "form", "fieldset", "address")
_MARKDOWN_HEADING = re.compile(r"^[ \t]*#{1,6}[ \t].*$", re.MULTILINE)
_MARKDOWN_ITEM = re.compile(r"^[ \t]*([-*+][ \t]|\d+[.)][ \t]|>)", re.MULTILINE)
_CONTENT_TYPES = {
    "text/plain": ".txt", "text/markdown": ".md", "text/x-markdown": ".md",
    "text/html": ".html", "application/xhtml+xml": ".html", "application/pdf": ".pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
}


class DocumentError(Exception):
    """A document (or URL) that yields no usable text; str() names it and says why."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def _keep_going() -> None:
    return None


@dataclass(frozen=True)
class ReadLimits:
    """What reading one document may cost, and how a job that must stop says so."""
    max_chars: int = 1_000_000                    # text kept (HELIX_DATAPREP_MAX_DOCUMENT_CHARS)
    max_bytes: int = DOCUMENT_MAX_INFLATED_BYTES  # inflated or raw bytes read (HELIX_DATAPREP_MAX_DOCUMENT_BYTES)
    check_stop: Callable[[], None] = _keep_going  # raises once the job must stop


def cut(text: str, max_chars: int) -> str:
    """`text` within `max_chars`, ended at a word boundary where there is one."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    space = max(head.rfind(" "), head.rfind("\n"))
    return head[:space].rstrip() if space > 0 else head


def extract_text(filename: str, data: bytes, *, fetcher: UrlFetcher | None = None,
                 limits: ReadLimits = ReadLimits()) -> str:
    """The plain text of one uploaded file, chosen by its extension (see SUPPORTED_EXTENSIONS).
    It may be longer than `limits.max_chars` (by up to a page or a paragraph): `cut` it."""
    ext = _extension(filename)
    if ext not in SUPPORTED_EXTENSIONS:
        raise DocumentError(filename, f"unsupported file type {repr(ext) if ext else '(no extension)'}; "
                                      f"supported: {', '.join(SUPPORTED_EXTENSIONS)}")
    if not data:
        raise DocumentError(filename, "the file is empty")
    if ext == ".url":
        urls = _urls_in_file(filename, _decode_text(filename, data))
        return "\n\n".join(text for _, text in _fetch_all(filename, urls, fetcher, limits))
    return _extract_as(filename, ext, data, limits=limits)


def extract_url_field(value: str, fetcher: UrlFetcher | None = None,
                      limits: ReadLimits = ReadLimits()) -> list[tuple[str, str]]:
    """(url, text) for each URL in a form field (URLs separated by whitespace)."""
    return _fetch_all("URL field", value.split(), fetcher, limits)


def extract_fetched(url: str, content_type: str, data: bytes, limits: ReadLimits = ReadLimits()) -> str:
    """The text of a fetched page, by its content type (or its path's extension when the server
    sends none we know)."""
    mime, _, params = content_type.partition(";")
    ext = _CONTENT_TYPES.get(mime.strip().lower()) or _extension(urlsplit(url).path)
    if ext not in SUPPORTED_EXTENSIONS or ext == ".url":
        raise DocumentError(url, f"unsupported content type {mime.strip() or '(none)'!r}; "
                                 "fetch HTML, PDF, Word (.docx) or plain text")
    if not data:
        raise DocumentError(url, "the response is empty")
    charset = re.search(r"charset\s*=\s*\"?([\w.:-]+)", params, re.IGNORECASE)
    return _extract_as(url, ext, data, charset.group(1) if charset else None, limits)


def normalise_whitespace(text: str) -> str:
    """Paragraphs (separated by a blank line) joined by "\n\n"; inside one, any whitespace
    (line breaks from a PDF's layout included) becomes a single space."""
    paragraphs = (" ".join(p.split()) for p in re.split(r"\n[^\S\n]*\n", _unix_newlines(text)))
    return "\n\n".join(p for p in paragraphs if p)


def _extract_as(source: str, ext: str, data: bytes, charset: str | None = None,
                limits: ReadLimits = ReadLimits()) -> str:
    if ext == ".pdf":
        text = _pdf_text(source, data, limits)
    elif ext == ".docx":
        text = _docx_text(source, data, limits)
    elif len(data) > limits.max_bytes:
        raise DocumentError(source, f"{len(data)} bytes of text; the limit is {limits.max_bytes} bytes per"
                                    " document (HELIX_DATAPREP_MAX_DOCUMENT_BYTES): split it")
    elif ext in (".html", ".htm"):
        text = _html_text(_decode_text(source, data, charset), limits.check_stop)
    elif ext == ".md":
        # A heading, list item or quote is its own paragraph even without blank lines around it.
        text = _unix_newlines(_decode_text(source, data, charset))
        text = _MARKDOWN_HEADING.sub(lambda m: f"\n{m.group(0)}\n", text)
        text = _MARKDOWN_ITEM.sub(lambda m: "\n" + m.group(0), text)
    else:
        text = _decode_text(source, data, charset)
    text = normalise_whitespace(text)
    if not text:
        raise DocumentError(source, "no text in it (only whitespace or markup)")
    return text


def _extension(name: str) -> str:
    base = name.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    return "." + base.rsplit(".", 1)[1].lower() if "." in base.strip(".") else ""


def _unix_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _decode_text(source: str, data: bytes, charset: str | None = None) -> str:
    """The declared charset, else UTF-8 (UTF-16 with a byte-order mark, as Windows saves it);
    failing those, the encoding charset_normalizer finds (Windows-1252 where it reads as well as
    the best guess: short Western text fits many code pages), kept only when it reads as text."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        charset = "utf-16"
    elif b"\x00" in data:
        raise DocumentError(source, "binary content (NUL bytes), not text")
    text = None
    for encoding in filter(None, (charset, "utf-8-sig")):
        try:
            text = data.decode(encoding)
            break
        except (UnicodeDecodeError, LookupError):
            continue
    if text is None:
        text = _guess_encoding(data)
    unprintable = sum(1 for ch in text if not (ch.isprintable() or ch.isspace()))
    if unprintable > 0.05 * len(text):
        raise DocumentError(source, "binary content (too many unprintable characters), not text")
    return text


def _guess_encoding(data: bytes) -> str:
    from charset_normalizer import from_bytes  # imported here: most documents are UTF-8

    matches = from_bytes(data)
    best = matches.best()
    if best is None:
        return data.decode("latin-1")  # every byte is a character: the printable check decides
    western = next((m for m in matches if m.encoding == "cp1252" and m.chaos <= best.chaos
                    and m.coherence >= best.coherence), None)
    return str(western or best)


def _html_text(html: str, check_stop: Callable[[], None] = _keep_going) -> str:
    """The page's text, paragraphs set apart. One walk over the tree: inserting separators into
    it instead cost quadratic time (a 1.6 MB page took 160 s, now 3.6 s)."""
    from bs4 import BeautifulSoup, CData, NavigableString  # imported here: only HTML needs it

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup.find_all(_DROPPED_HTML):
        tag.decompose()
    parts, stack = [], [(soup, False)]  # (node, whether its end was reached)
    while stack:
        node, closing = stack.pop()
        if closing:  # a block ends a paragraph; a table cell is set apart by a space
            parts.append("\n\n" if node.name in _BLOCK_HTML else " ")
        elif isinstance(node, NavigableString):
            if type(node) in (NavigableString, CData):  # not comments, doctypes and the like
                parts.append(str(node))
        elif node.name == "br":
            parts.append("\n")
        else:
            check_stop()
            if node.name in _BLOCK_HTML:
                parts.append("\n\n")
            if node.name in _BLOCK_HTML or node.name in ("td", "th"):
                stack.append((node, True))
            stack.extend((child, False) for child in reversed(node.contents))
    return "".join(parts)


def _pdf_text(source: str, data: bytes, limits: ReadLimits) -> str:
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentError(source, "the PDF is password-protected; upload an unlocked copy")
        pages, chars = [], 0
        for page in reader.pages:
            limits.check_stop()
            pages.append(page.extract_text() or "")
            chars += len(pages[-1])
            if chars > limits.max_chars:
                break  # the rest would be cut
    except DocumentError:
        raise
    except Exception as exc:  # pypdf raises many types on a malformed file
        raise DocumentError(source, f"not a readable PDF ({exc})") from exc
    if not pages:
        raise DocumentError(source, "the PDF has no pages")
    if not any(page.strip() for page in pages):
        raise DocumentError(source, "looks scanned: no text layer; run OCR first")
    return "\n\n".join(pages)


def _docx_text(source: str, data: bytes, limits: ReadLimits) -> str:
    import docx
    from docx.table import Table

    try:  # the sizes in the zip's directory: zipfile inflates no member past its own
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            inflated = sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, ValueError, EOFError):
        inflated = 0  # not a zip: python-docx says so below
    if inflated > limits.max_bytes:
        raise DocumentError(source, f"inflates to {inflated} bytes; the limit is {limits.max_bytes} bytes per"
                                    " document (HELIX_DATAPREP_MAX_DOCUMENT_BYTES): remove its pictures or split it")
    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # a zip error, a missing part, the wrong content type...
        raise DocumentError(source, "not a valid .docx (Word 2007 or later) document; "
                                    "save it as .docx or export it to PDF") from exc
    paragraphs, chars = [], 0
    for block in document.iter_inner_content():  # paragraphs and tables, in document order
        limits.check_stop()
        if chars > limits.max_chars:
            break  # the rest would be cut
        if isinstance(block, Table):
            for row in block.rows:
                cells = []
                for cell in row.cells:  # a merged cell appears once per grid column it spans
                    if not cells or cell._tc is not cells[-1]._tc:
                        cells.append(cell)
                paragraphs.append(" | ".join(" ".join(c.text.split()) for c in cells))
        else:
            paragraphs.append(block.text)
        chars += len(paragraphs[-1])
    return "\n\n".join(paragraphs)


def _urls_in_file(source: str, text: str) -> list[str]:
    """One URL per line; blank lines, "#" comments and a Windows shortcut's other keys are
    skipped ("[InternetShortcut]" files keep theirs in a "URL=" line)."""
    urls = []
    for line in (line.strip() for line in text.splitlines()):
        key = re.match(r"(?i)url\s*=\s*(\S.*)$", line)
        if key:
            urls.append(key.group(1).strip())
        elif line and not line.startswith(("#", "[")) and not re.match(r"\w+\s*=", line):
            urls.append(line)
    if not urls:
        raise DocumentError(source, "no URL in it; put one http(s) URL on each line")
    return urls


def _fetch_all(source: str, urls: list[str], fetcher: UrlFetcher | None,
               limits: ReadLimits = ReadLimits()) -> list[tuple[str, str]]:
    if not urls:
        raise DocumentError(source, "no URL given")
    if len(urls) > MAX_URLS:
        raise DocumentError(source, f"{len(urls)} URLs; at most {MAX_URLS} at a time")
    fetcher = fetcher or UrlFetcher()
    results = []
    for url in urls:
        limits.check_stop()
        try:
            content_type, body = fetcher.fetch(url)
            results.append((url, extract_fetched(url, content_type, body, limits)))
        except (DocumentError, FetchError) as exc:
            raise DocumentError(source, str(exc)) from exc
    return results
