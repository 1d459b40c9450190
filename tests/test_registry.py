"""The model registry on a real directory: immutable versions, atomic tags, a rollback stack,
and several processes writing at once."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aiassist.registry.store import (
    MANIFEST_FILE,
    MODEL_FILE,
    ModelRegistry,
    RegistryError,
    TrainingInfo,
    sha256_file,
)

MODULE = "reference"
FEATURES = ["signal", "threshold"]


def publish(registry: ModelRegistry, data: bytes = b"model-bytes", **kwargs: object):  # type: ignore[no-untyped-def]
    return registry.publish(
        kwargs.pop("module", MODULE),  # type: ignore[arg-type]
        data,
        feature_names=FEATURES,
        input_name="input",
        output_name="output",
        n_outputs=1,
        framework="test",
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models")


# --- versions ----------------------------------------------------------------------------
def test_publish_numbers_versions_in_order(registry: ModelRegistry) -> None:
    assert registry.versions(MODULE) == [] and registry.modules() == []
    training = TrainingInfo(rows=80, holdout_rows=20, seed=3, source="synthetic")
    first = publish(registry, b"one", training=training, metrics={"auc": 0.9})
    second = publish(registry, b"two")
    assert (first.version, second.version) == ("v0001", "v0002")
    assert registry.versions(MODULE) == ["v0001", "v0002"]
    assert registry.modules() == [MODULE]
    folder = registry.version_dir(MODULE, "v0001")
    assert (folder / MODEL_FILE).read_bytes() == b"one"
    stored = registry.manifest(MODULE, "v0001")
    assert stored == first
    assert stored.sha256 == sha256_file(folder / MODEL_FILE)
    assert stored.training == training and stored.metrics == {"auc": 0.9}
    assert registry.manifest(MODULE, "v0002").sha256 != stored.sha256


def test_publish_accepts_a_file(registry: ModelRegistry, tmp_path: Path) -> None:
    source = tmp_path / "exported.onnx"
    source.write_bytes(b"from a file")
    manifest = publish(registry, source)  # type: ignore[arg-type]
    path = registry.version_dir(MODULE, manifest.version) / MODEL_FILE
    assert path.read_bytes() == b"from a file"


def test_versions_are_immutable(registry: ModelRegistry) -> None:
    publish(registry, b"original", version="v0001")
    with pytest.raises(RegistryError, match="already exists; versions are immutable"):
        publish(registry, b"replacement", version="v0001")
    assert (registry.version_dir(MODULE, "v0001") / MODEL_FILE).read_bytes() == b"original"
    assert registry.versions(MODULE) == ["v0001"]
    # and the refused write left nothing behind, not even a staging directory
    assert [p.name for p in (registry.root / MODULE / "versions").iterdir()] == ["v0001"]


def test_explicit_version_names(registry: ModelRegistry) -> None:
    assert publish(registry, version="2024-06-01.import").version == "2024-06-01.import"
    assert registry.manifest(MODULE, "2024-06-01.import").version == "2024-06-01.import"


def test_numbering_survives_a_pruned_version(registry: ModelRegistry) -> None:
    for _ in range(3):
        publish(registry)
    # An operator frees space by removing the oldest version from the volume.
    shutil.rmtree(registry.version_dir(MODULE, "v0001"))
    assert publish(registry).version == "v0004"


@pytest.mark.parametrize(
    "name", ["", "../escape", "a/b", ".hidden", "-dash", "with space", "x" * 65, "caf\u00e9"]
)
def test_bad_names_are_refused(registry: ModelRegistry, name: str) -> None:
    publish(registry)
    with pytest.raises(RegistryError, match="invalid module name"):
        publish(registry, module=name)
    if name:  # an empty version means "number it for me"
        with pytest.raises(RegistryError, match="invalid version name"):
            publish(registry, version=name)
    with pytest.raises(RegistryError, match="invalid tag name"):
        registry.set_tag(MODULE, name, "v0001", actor="test")
    with pytest.raises(RegistryError, match="invalid module name"):
        registry.versions(name)
    assert not (registry.root.parent / "escape").exists()
    assert registry.versions(MODULE) == ["v0001"] and registry.tags(MODULE) == {}


def test_staging_directories_are_never_listed(registry: ModelRegistry) -> None:
    publish(registry)
    # What a publisher that crashed mid-write leaves: a staging dir with a partial model.
    staging = registry.root / MODULE / "versions" / ".tmp-0123456789abcdef"
    staging.mkdir()
    (staging / MODEL_FILE).write_bytes(b"half a mod")
    assert registry.versions(MODULE) == ["v0001"]
    assert publish(registry).version == "v0002"
    assert registry.versions(MODULE) == ["v0001", "v0002"]


_CRASHING_PUBLISHER = """
import os, sys
from pathlib import Path
from aiassist.registry.store import ModelRegistry

def crash(src, dst):  # the process dies after writing the files, before the rename
    os._exit(17)

os.rename = crash
ModelRegistry(Path(sys.argv[1])).publish(
    "reference", b"x" * 100_000, feature_names=["signal", "threshold"], input_name="input",
    output_name="output", n_outputs=1, framework="test",
)
"""


def test_a_publisher_killed_before_the_rename_leaves_no_version(registry: ModelRegistry) -> None:
    publish(registry)
    done = subprocess.run(
        [sys.executable, "-c", _CRASHING_PUBLISHER, str(registry.root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 17, done.stderr
    folder = registry.root / MODULE / "versions"
    leftovers = [p for p in folder.iterdir() if p.name.startswith(".tmp-")]
    assert len(leftovers) == 1 and (leftovers[0] / MANIFEST_FILE).exists()  # it got that far
    assert registry.versions(MODULE) == ["v0001"]
    assert publish(registry, b"next").version == "v0002"  # the lock died with the process


_STEADY_PUBLISHER = """
import sys
from pathlib import Path
from aiassist.registry.store import ModelRegistry

registry = ModelRegistry(Path(sys.argv[1]))
for i in range(int(sys.argv[2])):
    registry.publish(
        "reference", bytes([i % 256]) * 400_000, feature_names=["signal", "threshold"],
        input_name="input", output_name="output", n_outputs=1, framework="test",
    )
"""


def test_readers_never_see_half_a_version(registry: ModelRegistry) -> None:
    count = 25
    writer = subprocess.Popen(
        [sys.executable, "-c", _STEADY_PUBLISHER, str(registry.root), str(count)]
    )
    checked: set[str] = set()
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            finished = writer.poll() is not None
            for version in registry.versions(MODULE):
                folder = registry.version_dir(MODULE, version)
                manifest = registry.manifest(MODULE, version)  # complete, or not listed
                assert sha256_file(folder / MODEL_FILE) == manifest.sha256
                checked.add(version)
            if finished:
                break
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == 0
    assert sorted(checked) == [f"v{i:04d}" for i in range(1, count + 1)]


# --- tags, history, rollback -------------------------------------------------------------
def test_set_tag_resolve_and_history(registry: ModelRegistry) -> None:
    publish(registry)
    publish(registry)
    assert registry.resolve(MODULE, "stable") is None and registry.history(MODULE) == []
    registry.set_tag(MODULE, "stable", "v0001", actor="alice", reason="first")
    registry.set_tag(MODULE, "candidate", "v0002", actor="daemon")
    move = registry.set_tag(MODULE, "stable", "v0002", actor="bob", reason="better")
    assert (move.previous, move.version, move.kind) == ("v0001", "v0002", "set")
    assert registry.tags(MODULE) == {"stable": "v0002", "candidate": "v0002"}
    assert registry.resolve(MODULE, "stable") == "v0002"
    registry.set_tag(MODULE, "candidate", None, actor="daemon", reason="cleared")
    assert registry.tags(MODULE) == {"stable": "v0002"}
    assert registry.resolve(MODULE, "candidate") is None
    history = registry.history(MODULE)
    assert [(m.tag, m.version, m.previous, m.actor) for m in history] == [
        ("stable", "v0001", None, "alice"),
        ("candidate", "v0002", None, "daemon"),
        ("stable", "v0002", "v0001", "bob"),
        ("candidate", None, "v0002", "daemon"),
    ]
    assert history[0].reason == "first" and history[0].at <= history[-1].at
    on_disk = json.loads((registry.root / MODULE / "tags.json").read_text())
    assert on_disk == {"stable": "v0002"}


def test_a_tag_must_name_an_existing_version(registry: ModelRegistry) -> None:
    publish(registry)
    with pytest.raises(RegistryError, match="has no version 'v0009'"):
        registry.set_tag(MODULE, "stable", "v0009", actor="test")
    assert registry.tags(MODULE) == {} and registry.history(MODULE) == []


def test_rollback_pops_the_stack(registry: ModelRegistry) -> None:
    for _ in range(4):
        publish(registry)
    with pytest.raises(RegistryError, match="has no 'stable' version to roll back"):
        registry.rollback(MODULE, actor="ops")
    for version in ("v0001", "v0002", "v0003"):
        registry.set_tag(MODULE, "stable", version, actor="ops")
        registry.set_tag(MODULE, "candidate", "v0004", actor="daemon")  # other tags: no effect

    back = registry.rollback(MODULE, actor="ops")
    assert (back.version, back.previous, back.kind) == ("v0002", "v0003", "rollback")
    assert back.reason == "rollback from v0003"
    assert registry.resolve(MODULE, "stable") == "v0002"
    back = registry.rollback(MODULE, actor="ops", reason="v0002 misbehaves too")
    assert (back.version, back.reason) == ("v0001", "v0002 misbehaves too")
    with pytest.raises(RegistryError, match="no earlier 'stable' version to roll back to"):
        registry.rollback(MODULE, actor="ops")
    assert registry.resolve(MODULE, "stable") == "v0001"  # a refused rollback moves nothing

    registry.set_tag(MODULE, "stable", "v0004", actor="ops")
    back = registry.rollback(MODULE, actor="ops")
    assert (back.version, back.previous) == ("v0001", "v0004")  # not v0003: it was popped
    assert registry.resolve(MODULE, "candidate") == "v0004"
    kinds = [m.kind for m in registry.history(MODULE) if m.tag == "stable"]
    assert kinds == ["set", "set", "set", "rollback", "rollback", "set", "rollback"]


def test_rollback_of_another_tag_and_after_removal(registry: ModelRegistry) -> None:
    publish(registry)
    publish(registry)
    registry.set_tag(MODULE, "candidate", "v0001", actor="daemon")
    registry.set_tag(MODULE, "candidate", "v0002", actor="daemon")
    registry.set_tag(MODULE, "stable", "v0002", actor="ops")
    assert registry.rollback(MODULE, tag="candidate", actor="ops").version == "v0001"
    assert registry.resolve(MODULE, "stable") == "v0002"
    registry.set_tag(MODULE, "candidate", None, actor="ops")  # removing a tag empties its stack
    registry.set_tag(MODULE, "candidate", "v0002", actor="ops")
    with pytest.raises(RegistryError, match="no earlier 'candidate' version"):
        registry.rollback(MODULE, tag="candidate", actor="ops")


_WORKER = """
import sys, time
from pathlib import Path
from aiassist.registry.store import ModelRegistry

root, worker, what, count = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
registry = ModelRegistry(root / "models")
(root / f"ready-{worker}").touch()
while not (root / "go").exists():  # start together, so the writes really overlap
    time.sleep(0.001)
for i in range(count):
    if what == "tag":
        version = f"v{(worker + i) % 4 + 1:04d}"
        registry.set_tag("reference", "stable", version, actor=f"worker-{worker}", reason=str(i))
    else:
        registry.publish(
            "reference", b"from another process", feature_names=["signal", "threshold"],
            input_name="input", output_name="output", n_outputs=1, framework="test",
        )
"""


def start_workers(
    registry: ModelRegistry, what: str, workers: int, count: int
) -> list[subprocess.Popen[bytes]]:
    """Separate processes that each wait for the others, then write `count` times."""
    root = registry.root.parent
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(root), str(w), what, str(count)])
        for w in range(workers)
    ]
    deadline = time.monotonic() + 60
    while not all((root / f"ready-{w}").exists() for w in range(workers)):
        assert time.monotonic() < deadline, "workers did not start"
        assert all(p.poll() is None for p in procs), "a worker died before starting"
        time.sleep(0.005)
    (root / "go").touch()
    return procs


def test_concurrent_tag_moves_lose_nothing(registry: ModelRegistry) -> None:
    for _ in range(4):
        publish(registry)
    workers, moves = 4, 25
    procs = start_workers(registry, "tag", workers, moves)
    tags_file = registry.root / MODULE / "tags.json"
    reads = 0
    deadline = time.monotonic() + 60
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if tags_file.exists():  # every read sees a whole file: old tags or new, never a mix
            assert json.loads(tags_file.read_bytes())["stable"] in registry.versions(MODULE)
            reads += 1
    for proc in procs:
        assert proc.wait(30) == 0
    assert reads > 0

    history = registry.history(MODULE)
    assert len(history) == workers * moves
    for w in range(workers):
        mine = [m for m in history if m.actor == f"worker-{w}"]
        assert [m.reason for m in mine] == [str(i) for i in range(moves)]  # each in its order
    # Moves were serialized: each one's `previous` is what the one before it set.
    assert history[0].previous is None
    for before, after in itertools.pairwise(history):
        assert after.previous == before.version
    assert registry.tags(MODULE) == {"stable": history[-1].version}


def test_concurrent_publishers_never_share_a_number(registry: ModelRegistry) -> None:
    procs = start_workers(registry, "publish", 4, 5)
    for proc in procs:
        assert proc.wait(60) == 0
    assert registry.versions(MODULE) == [f"v{i:04d}" for i in range(1, 21)]
    assert all(registry.manifest(MODULE, v).version == v for v in registry.versions(MODULE))


# --- verdicts and damaged versions -------------------------------------------------------
def test_reject_writes_a_verdict(registry: ModelRegistry) -> None:
    publish(registry)
    publish(registry)
    assert registry.verdict(MODULE, "v0002") is None
    registry.reject(MODULE, "v0002", "held-out quality 0.61 is below v0001's 0.74", {"rows": 40})
    verdict = registry.verdict(MODULE, "v0002")
    assert verdict is not None
    assert verdict["verdict"] == "rejected"
    assert verdict["reason"] == "held-out quality 0.61 is below v0001's 0.74"
    assert verdict["rows"] == 40 and verdict["at"]
    assert registry.verdict(MODULE, "v0001") is None
    assert json.loads((registry.root / MODULE / "verdicts" / "v0002.json").read_text()) == verdict
    assert registry.versions(MODULE) == ["v0001", "v0002"]  # a rejected version stays


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.write_text("{not json"), id="garbage"),
        pytest.param(lambda p: p.write_text('{"module": "reference"}'), id="incomplete"),
        pytest.param(
            lambda p: p.write_text(json.dumps(json.loads(p.read_text()) | {"unexpected": 1})),
            id="unknown-field",
        ),
        pytest.param(lambda p: p.unlink(), id="missing"),
    ],
)
def test_unreadable_manifest_is_a_registry_error(registry: ModelRegistry, damage) -> None:  # type: ignore[no-untyped-def]
    publish(registry)
    damage(registry.version_dir(MODULE, "v0001") / MANIFEST_FILE)
    with pytest.raises(RegistryError, match="reference/v0001: unreadable manifest"):
        registry.manifest(MODULE, "v0001")


def test_unknown_version_is_a_registry_error(registry: ModelRegistry) -> None:
    with pytest.raises(RegistryError, match="module 'reference' has no version 'v0001'"):
        registry.manifest(MODULE, "v0001")
