"""Argument checking against a tool's JSON Schema, with errors a model can act on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema

from aiassist.agent.tools import ToolError

__all__ = ["schema_validator"]

_SHOWN_PROBLEMS = 5


def schema_validator(schema: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A `Tool.validate` for `schema` (JSON Schema 2020-12, formats checked).

    The error names each wrong field by its path (`body.category.name: 7 is not of type
    'string'`) so the model can fix its call instead of guessing.
    """
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )

    def validate(arguments: dict[str, Any]) -> dict[str, Any]:
        errors = sorted(validator.iter_errors(arguments), key=lambda e: str(e.absolute_path))
        if errors:
            problems = "; ".join(_problem(e) for e in errors[:_SHOWN_PROBLEMS])
            raise ToolError(f"invalid arguments: {problems}", retryable=False)
        return arguments

    return validate


def _problem(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "arguments"
    return f"{where}: {error.message[:200]}"
