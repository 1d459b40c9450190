"""Old import paths keep working for one release: each warns and gives the same objects."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

MOVED = [
    ("aiassist.engine", "Engine", "aiassist.decider", "Decider"),
    ("aiassist.dispatch", "PriorityDispatcher", "aiassist.modules.priority.dispatch", None),
    ("aiassist.retry.policy", "RetryPolicy", "aiassist.modules.retry.policy", None),
    ("aiassist.registry.runtime", "ModelWatcher", "aiassist.registry.serving", None),
    ("aiassist.agent.service", "build_runtime", "aiassist.agent.assembly", None),
    ("aiassist.integrations.celery_agent", "make_app", "aiassist.integrations.celery.agent", None),
    ("aiassist.server.routers.priority", "priority_router", "aiassist.modules.priority.api", None),
]


@pytest.mark.parametrize(("old", "name", "new", "renamed"), MOVED)
def test_an_old_path_warns_and_forwards(old: str, name: str, new: str, renamed: str | None) -> None:
    code = (
        "import warnings, importlib\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        f"    module = importlib.import_module({old!r})\n"
        f"    forwarded = getattr(module, {name!r})\n"
        "assert any(w.category is DeprecationWarning and "
        f"{new!r} in str(w.message) for w in seen), [str(w.message) for w in seen]\n"
        f"assert forwarded is getattr(importlib.import_module({new!r}), {(renamed or name)!r})\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_nothing_of_the_package_imports_an_old_path() -> None:
    """The package's own code uses the new paths: importing every module of it (the shims
    and migrations aside) warns of nothing."""
    package = Path(importlib.import_module("aiassist").__file__ or "").parent
    shims = {
        ".".join(("aiassist", *p.relative_to(package).with_suffix("").parts))
        for p in package.rglob("*.py")
        if "moved(__name__" in p.read_text()
    }
    names = sorted(
        ".".join(("aiassist", *p.relative_to(package).with_suffix("").parts)).removesuffix(
            ".__init__"
        )
        for p in package.rglob("*.py")
        if "migrations" not in p.parts and p.name != "__main__.py"
    )
    wanted = [n for n in names if n not in shims and not n.startswith("aiassist.retry")]
    code = (
        "import warnings, importlib\n"
        "warnings.simplefilter('error', DeprecationWarning)\n"
        f"for name in {wanted!r}:\n"
        "    importlib.import_module(name)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
