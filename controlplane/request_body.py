"""Reading request bodies: a body the app cannot read is refused with a 4xx that says why.

Flask, left to itself, lets JSON nested deeper than Python's recursion limit raise
RecursionError, a 500.
"""
from __future__ import annotations

from typing import Any

from flask.json.provider import DefaultJSONProvider

from controlplane.errors import BadRequest


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
