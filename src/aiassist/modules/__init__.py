"""Decision modules and their discovery.

Built-in modules are the sub-packages of this package; each exposes `module`, an instance
of `Module`. Other distributions add modules through the `aiassist.modules` entry point.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from aiassist.modules.base import Decision, Features, Module, Outcome, new_decision_id

__all__ = [
    "AnyModule",
    "Decision",
    "Features",
    "Module",
    "Outcome",
    "UnknownModuleError",
    "available_modules",
    "get_module",
    "new_decision_id",
]

AnyModule = Module[Any, Any, Any]


class UnknownModuleError(LookupError):
    def __init__(self, name: str) -> None:
        self.name = name
        known = ", ".join(sorted(available_modules())) or "none"
        super().__init__(f"unknown module {name!r}; available: {known}")


@cache
def available_modules() -> dict[str, AnyModule]:
    """All modules by name: the built-in packages, then entry points of other packages."""
    found: dict[str, AnyModule] = {}
    for info in pkgutil.iter_modules(__path__):
        if not info.ispkg:
            continue
        package = importlib.import_module(f"{__name__}.{info.name}")
        module = getattr(package, "module", None)
        if isinstance(module, Module):
            found[module.name] = module
    for ep in entry_points(group="aiassist.modules"):
        if ep.name in found:
            continue
        loaded = ep.load()
        module = loaded() if isinstance(loaded, type) else loaded
        if not isinstance(module, Module):
            raise TypeError(f"entry point {ep.value} is not an aiassist Module")
        found[module.name] = module
    return found


def get_module(name: str) -> AnyModule:
    try:
        return available_modules()[name]
    except KeyError:
        raise UnknownModuleError(name) from None
