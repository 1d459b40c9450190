"""What a JSON document looks like, field by field: its paths, JSON types and value shapes.

`fields_of({"qty": 2, "items": [{"sku": "A-1"}]}, "body")` gives
`{"body.qty": ("number", "int"), "body.items": ("array", "1-9"), "body.items[].sku":
("string", "text")}`. Only the first element of an array is looked into, paths stop at a
depth and their number at a cap, so a large or hostile document costs a bounded amount.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

__all__ = ["MAX_DEPTH", "MAX_FIELDS", "FieldShape", "fields_of", "query_fields", "string_shape"]

MAX_DEPTH = 3
MAX_FIELDS = 64
#: (JSON type, value shape): the type is one of null, boolean, number, string, array,
#: object (integers and floats are both "number": a float that happens to be whole must
#: not read as a type change); the shape refines it (int/float, a string's format, ...).
FieldShape = tuple[str, str]

_HEX = frozenset("0123456789abcdefABCDEF")


def string_shape(value: str) -> str:
    """A cheap format class of a string: empty, uuid, date, datetime, numeric, email, url, text."""
    n = len(value)
    if n == 0:
        return "empty"
    if (
        n == 36
        and value[8] == value[13] == value[18] == value[23] == "-"
        and all(c in _HEX for c in value.replace("-", ""))
    ):
        return "uuid"
    if n >= 10 and value[4] == "-" and value[7] == "-" and value[:4].isdigit():
        return "datetime" if n > 10 else "date"
    if value.isdigit() or (value[0] in "+-" and value[1:].isdigit()):
        return "numeric"
    if "@" in value and " " not in value and n <= 254:
        return "email"
    if value.startswith(("http://", "https://")):
        return "url"
    return "text"


def _array_shape(n: int) -> str:
    return "empty" if n == 0 else "1-9" if n < 10 else "10-99" if n < 100 else "100+"


def _shape(value: Any) -> FieldShape:
    if value is None:
        return ("null", "null")
    if value is True or value is False:
        return ("boolean", "bool")
    if isinstance(value, int):
        return ("number", "int")
    if isinstance(value, float):
        return ("number", "float")
    if isinstance(value, str):
        return ("string", string_shape(value))
    if isinstance(value, list):
        return ("array", _array_shape(len(value)))
    if isinstance(value, dict):
        return ("object", "object")
    return ("string", "text")


def fields_of(document: Any, prefix: str) -> dict[str, FieldShape]:
    """Every field path of a parsed JSON document (bounded), with its type and shape."""
    out: dict[str, FieldShape] = {}
    _walk(document, prefix, 0, out)
    return out


def _walk(value: Any, path: str, depth: int, out: dict[str, FieldShape]) -> None:
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            return
        for key, child in value.items():
            if len(out) >= MAX_FIELDS:
                return
            name = f"{path}.{str(key)[:64]}"
            out[name] = _shape(child)
            if isinstance(child, dict | list):
                _walk(child, name, depth + 1, out)
    elif isinstance(value, list) and value and depth < MAX_DEPTH:
        first = value[0]
        if isinstance(first, dict):
            _walk(first, f"{path}[]", depth, out)


def query_fields(query_string: str) -> dict[str, FieldShape]:
    """The query parameters as fields (always strings; the shape says what they hold)."""
    out: dict[str, FieldShape] = {}
    for key, value in parse_qsl(query_string, keep_blank_values=True)[:MAX_FIELDS]:
        out[f"query.{key[:64]}"] = ("string", string_shape(value))
    return out
