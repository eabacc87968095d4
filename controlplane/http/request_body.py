"""Reading request bodies: a body the app cannot read is refused with a 4xx that says why.

Flask and werkzeug, left to themselves, leave three holes that this module closes:
- under gunicorn (which terminates bodies itself, so werkzeug limits the stream's length rather
  than trusting Content-Length) a body of exactly the size limit is refused with 413, and a
  chunked body longer than the limit is cut short at it instead of refused;
- a form werkzeug cannot decode becomes an empty form, so the route answers "missing 'mode'"
  rather than naming what was wrong;
- JSON nested deeper than Python's recursion limit raises RecursionError, a 500.
"""
from __future__ import annotations

from typing import IO, Any

from flask import Request as FlaskRequest
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.http import parse_options_header
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream

from controlplane.errors import BadRequest


class _BodyLimit(LimitedStream):
    """A body of unknown length read up to the limit: at the limit it looks one byte further, so a
    body of exactly the limit is read whole and only a body that goes on is refused (413)."""

    def __init__(self, stream: IO[bytes], limit: int):
        super().__init__(stream, limit, is_max=True)

    def on_exhausted(self) -> None:
        try:
            more = self._stream.read(1)
        except (OSError, ValueError) as err:
            self.on_disconnect(error=err)
            return
        if more:
            raise RequestEntityTooLarge()

    def readall(self) -> bytes:
        data = super().readall()  # werkzeug's stops at the limit without asking whether more follows
        if self.is_exhausted:
            self.on_exhausted()
        return data


def _undecodable(err: UnicodeDecodeError, mimetype: str) -> str:
    if mimetype == "multipart/form-data":
        # werkzeug decodes each header line of a part strictly: the failing line names the field.
        line = bytes(err.object).decode("utf-8", "replace")
        name = parse_options_header(line.partition(":")[2])[1].get("name")
        if name is not None:
            return f"multipart field {name!r}: its name or file name is not valid UTF-8"
        return "a multipart part's headers are not valid UTF-8"
    return "the form body is not valid UTF-8 (percent-encode any other bytes)"


class _FormParser(FormDataParser):
    """werkzeug's form parser, made to refuse what it cannot parse instead of dropping the form."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **{**kwargs, "silent": False})

    def parse(self, stream, mimetype, content_length, options=None):
        try:
            return super().parse(stream, mimetype, content_length, options)
        except UnicodeDecodeError as err:
            raise BadRequest(_undecodable(err, mimetype)) from None
        except ValueError as err:
            raise BadRequest(f"malformed form body: {err}") from None


class Request(FlaskRequest):
    form_data_parser_class = _FormParser

    @cached_property
    def stream(self) -> IO[bytes]:
        checked = super().stream  # werkzeug's checks: 413 for a Content-Length above the limit
        limit = self.max_content_length
        if limit is None or "wsgi.input_terminated" not in self.environ:
            return checked
        return _BodyLimit(self.environ["wsgi.input"], limit)


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels, found level by level (no recursion)."""
    level = [value] if isinstance(value, (dict, list)) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [child for node in level for child in (node.values() if isinstance(node, dict) else node)
                 if isinstance(child, (dict, list))]
    return False


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON, refusing deep nesting: past Python's recursion limit the parser raises
    RecursionError, and a value just under it would break whatever walks it next (storing it,
    answering it)."""

    max_depth = 64

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        too_deep = f"JSON nested too deeply: at most {self.max_depth} levels of arrays and objects"
        try:
            value = super().loads(s, **kwargs)
        except RecursionError:
            raise BadRequest(too_deep) from None
        if _deeper_than(value, self.max_depth):
            raise BadRequest(too_deep)
        return value
