"""Old import paths kept for one release: each shim warns when imported and forwards its
names to where they live now, so code written against the old layout runs unchanged."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["moved"]


def moved(old: str, *new: str, renamed: Mapping[str, str] | None = None) -> Callable[[str], Any]:
    """Warn that module `old` moved to `new` and return the shim's `__getattr__`: a name is
    looked up in each new module in turn (`renamed` maps an old name to its new one)."""
    warnings.warn(
        f"{old} is deprecated and goes away in the next release; import from "
        f"{' or '.join(new)} instead",
        DeprecationWarning,
        stacklevel=3,  # the importer's line (import machinery frames are skipped)
    )
    aliases = dict(renamed or {})

    def forward(name: str) -> Any:
        for target in new:
            module = importlib.import_module(target)
            try:
                return getattr(module, aliases.get(name, name))
            except AttributeError:
                continue
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return forward
