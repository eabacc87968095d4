"""The Python client's types (clients/python/helix_client/types.py), written from the OpenAPI
document's schemas of the sessions API's answers, so that the client and the server cannot drift
apart (the suite regenerates the file and compares). Run after changing helix_types.py:

    .venv/bin/python -m controlplane.contract.client_types > clients/python/helix_client/types.py
"""
from __future__ import annotations

import json
import sys
from typing import Any

from controlplane.contract import helix_types

HEADER = '''"""The sessions API's answers as typed dictionaries, written from the server's OpenAPI document
(controlplane/contract/client_types.py writes this file; do not edit it by hand)."""
from __future__ import annotations

from typing import {imports}'''
SCALARS = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "None"}


def python_type(schema: dict[str, Any]) -> str:
    """The annotation for a JSON Schema of the document."""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "enum" in schema:
        return f"Literal[{', '.join(json.dumps(v) for v in schema['enum'])}]"
    if "const" in schema:
        return f"Literal[{json.dumps(schema['const'])}]"
    if "anyOf" in schema:
        return " | ".join(dict.fromkeys(python_type(s) for s in schema["anyOf"]))
    kind = schema.get("type")
    if kind == "array":
        return f"list[{python_type(schema.get('items', {}))}]"
    if kind == "object":
        values = schema.get("additionalProperties")
        return f"dict[str, {python_type(values) if isinstance(values, dict) else 'Any'}]"
    return SCALARS.get(kind, "Any") if isinstance(kind, str) else "Any"


def render(document: dict[str, Any]) -> str:
    """Every schema of the document that is one of Helix's types, as a TypedDict."""
    schemas = document["components"]["schemas"]
    names = sorted(name for name in schemas if name in {t.__name__ for t in helix_types.WIRE_TYPES})
    parts = [HEADER]
    for name in names:
        schema = schemas[name]
        required = set(schema.get("required", []))
        lines = [f"\n\n\nclass {name}(TypedDict):"]
        if schema.get("description"):
            lines.append(f'    """{" ".join(schema["description"].split())}"""\n')
        for field, prop in schema.get("properties", {}).items():
            annotation = python_type(prop)
            if len(annotation) > 80 and annotation.startswith("Literal["):  # one value list a line
                annotation = "Literal[\n        " + annotation[len("Literal["):]
            lines.append(f"    {field}: {annotation if field in required else f'NotRequired[{annotation}]'}")
        parts.append("\n".join(lines))
    body = "".join(parts[1:])
    used = [name for name in ("Any", "Literal", "NotRequired") if f"{name}[" in body or f"{name}]" in body
            or f", {name}" in body]
    return HEADER.format(imports=", ".join([*used, "TypedDict"])) + body + "\n"


def main() -> None:
    """From the models the document's schemas are made of, as openapi.build makes them."""
    from pydantic.json_schema import models_json_schema

    from controlplane.contract.openapi import REF

    _, top = models_json_schema([(t, "validation") for t in helix_types.WIRE_TYPES], ref_template=REF)
    sys.stdout.write(render({"components": {"schemas": top["$defs"]}}))


if __name__ == "__main__":
    main()
