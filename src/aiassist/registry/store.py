"""The model registry: immutable versions and movable tags in a directory (the model volume).

```
<root>/<module>/versions/<version>/model.onnx
<root>/<module>/versions/<version>/manifest.json
<root>/<module>/tags.json            {"stable": "<version>", "candidate": "<version>", ...}
<root>/<module>/history.jsonl        every tag move, oldest first
<root>/<module>/verdicts/<version>.json   why a candidate was rejected
```

A version is written under a temporary name and renamed into place, so a half-written
version is never visible. Tags are rewritten with an atomic rename under a file lock, so
readers see the old or the new tag, never a mix, and two writers never lose a move.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "Manifest",
    "ModelRegistry",
    "RegistryError",
    "TagMove",
    "TrainingInfo",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_NUMBERED = re.compile(r"^v[0-9]+$")
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"


class RegistryError(Exception):
    """A registry operation was refused; the message says why."""


class TrainingInfo(BaseModel):
    rows: int = Field(ge=0)
    holdout_rows: int = Field(0, ge=0)
    window_start: datetime | None = None
    window_end: datetime | None = None
    seed: int | None = None
    source: str = Field("outcomes", description="'outcomes' (recorded) or 'synthetic'.")


class Manifest(BaseModel):
    """What a version is: its input/output schema, provenance, quality and checksum."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    module: str
    version: str
    created_at: datetime
    feature_names: list[str]
    input_name: str
    output_name: str
    n_outputs: int = Field(ge=1)
    framework: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    training: TrainingInfo | None = None
    metrics: dict[str, float] = Field(default_factory=dict)


class TagMove(BaseModel):
    at: datetime
    tag: str
    version: str | None
    previous: str | None
    actor: str
    reason: str = ""
    kind: Literal["set", "rollback"] = "set"


def _check_name(kind: str, name: str) -> str:
    if not _NAME.match(name):
        raise RegistryError(f"invalid {kind} name {name!r}: use letters, digits, '_', '.', '-'")
    return name


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _next_version(existing: list[str]) -> str:
    """One past the highest number used so far, whatever was pruned or named by hand."""
    numbers = [int(v[1:]) for v in existing if _NUMBERED.match(v)]
    return f"v{max(numbers, default=0) + 1:04d}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # --- reading -----------------------------------------------------------------------
    def modules(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "versions").is_dir())

    def versions(self, module: str) -> list[str]:
        """Complete versions, oldest first (v0001, v0002, ...)."""
        folder = self._module_dir(module) / "versions"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))

    def version_dir(self, module: str, version: str) -> Path:
        path = self._module_dir(module) / "versions" / _check_name("version", version)
        if not path.is_dir():
            raise RegistryError(f"module {module!r} has no version {version!r}")
        return path

    def manifest(self, module: str, version: str) -> Manifest:
        path = self.version_dir(module, version) / MANIFEST_FILE
        try:
            return Manifest.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as exc:
            raise RegistryError(f"{module}/{version}: unreadable manifest: {exc}") from exc

    def tags(self, module: str) -> dict[str, str]:
        path = self._module_dir(module) / "tags.json"
        try:
            data: dict[str, str] = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise RegistryError(f"{module}: tags.json is damaged: {exc}") from exc
        return data

    def resolve(self, module: str, tag: str) -> str | None:
        return self.tags(module).get(tag)

    def history(self, module: str) -> list[TagMove]:
        path = self._module_dir(module) / "history.jsonl"
        if not path.exists():
            return []
        return [TagMove.model_validate_json(line) for line in path.read_text().splitlines() if line]

    def verdict(self, module: str, version: str) -> dict[str, Any] | None:
        path = self._module_dir(module) / "verdicts" / f"{version}.json"
        if not path.exists():
            return None
        result: dict[str, Any] = json.loads(path.read_bytes())
        return result

    # --- writing -----------------------------------------------------------------------
    def publish(
        self,
        module: str,
        model: bytes | Path,
        *,
        feature_names: list[str],
        input_name: str,
        output_name: str,
        n_outputs: int,
        framework: str,
        training: TrainingInfo | None = None,
        metrics: dict[str, float] | None = None,
        version: str | None = None,
    ) -> Manifest:
        """Write a new immutable version; it becomes visible only once complete."""
        versions = self._module_dir(module) / "versions"
        versions.mkdir(parents=True, exist_ok=True)
        data = model.read_bytes() if isinstance(model, Path) else model
        with self._locked(module):  # numbering and renaming under the lock: no two v0007
            version = _check_name("version", version or _next_version(self.versions(module)))
            final = versions / version
            if final.exists():
                raise RegistryError(f"{module}/{version} already exists; versions are immutable")
            manifest = Manifest(
                module=module,
                version=version,
                created_at=datetime.now(UTC),
                feature_names=feature_names,
                input_name=input_name,
                output_name=output_name,
                n_outputs=n_outputs,
                framework=framework,
                sha256=hashlib.sha256(data).hexdigest(),
                training=training,
                metrics=metrics or {},
            )
            staging = versions / f".tmp-{uuid.uuid4().hex}"
            staging.mkdir()
            try:
                _write_atomic(staging / MODEL_FILE, data)
                _write_atomic(staging / MANIFEST_FILE, manifest.model_dump_json(indent=2).encode())
                os.rename(staging, final)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return manifest

    def set_tag(
        self, module: str, tag: str, version: str | None, *, actor: str, reason: str = ""
    ) -> TagMove:
        """Point `tag` at `version` (None removes it), atomically, and log the move."""
        _check_name("tag", tag)
        if version is not None:
            self.version_dir(module, version)  # must exist
        with self._locked(module):
            return self._move_locked(module, tag, version, actor, reason, "set")

    def rollback(
        self, module: str, *, tag: str = "stable", actor: str, reason: str = ""
    ) -> TagMove:
        """Move `tag` back to the version it pointed at before its current one.

        Tag moves form a stack: setting a tag pushes, a rollback pops. So rolling back twice
        goes two versions back, and never returns to the version just rolled back from.
        The stack is read and the move written under one lock: concurrent rollbacks
        go back one version each.
        """
        _check_name("tag", tag)
        with self._locked(module):
            stack: list[str] = []
            for move in self.history(module):
                if move.tag != tag:
                    continue
                if move.kind == "rollback":
                    stack.pop()
                elif move.version is None:
                    stack.clear()
                else:
                    stack.append(move.version)
            if not stack:
                raise RegistryError(f"module {module!r} has no {tag!r} version to roll back")
            if len(stack) < 2:
                raise RegistryError(
                    f"module {module!r}: no earlier {tag!r} version to roll back to"
                )
            current, target = stack[-1], stack[-2]
            return self._move_locked(
                module, tag, target, actor, reason or f"rollback from {current}", "rollback"
            )

    def _move_locked(
        self,
        module: str,
        tag: str,
        version: str | None,
        actor: str,
        reason: str,
        kind: Literal["set", "rollback"],
    ) -> TagMove:
        tags = self.tags(module)
        previous = tags.get(tag)
        if version is None:
            tags.pop(tag, None)
        else:
            tags[tag] = version
        move = TagMove(
            at=datetime.now(UTC),
            tag=tag,
            version=version,
            previous=previous,
            actor=actor,
            reason=reason,
            kind=kind,
        )
        _write_atomic(self._module_dir(module) / "tags.json", json.dumps(tags).encode())
        with open(self._module_dir(module) / "history.jsonl", "a") as f:
            f.write(move.model_dump_json() + "\n")
        return move

    def reject(self, module: str, version: str, reason: str, details: dict[str, Any]) -> None:
        folder = self._module_dir(module) / "verdicts"
        folder.mkdir(exist_ok=True)
        record = {"verdict": "rejected", "reason": reason, "at": datetime.now(UTC).isoformat()}
        _write_atomic(folder / f"{version}.json", json.dumps(record | details).encode())

    # --- helpers -----------------------------------------------------------------------
    def _module_dir(self, module: str) -> Path:
        return self.root / _check_name("module", module)

    @contextmanager
    def _locked(self, module: str) -> Iterator[None]:
        folder = self._module_dir(module)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
