"""Templates of log messages, mined online by Drain3 and kept across restarts.

Drain3 turns `Invalid user webmaster from 173.234.31.186` into the template
`Invalid user <*> from <IP>` and gives it a stable cluster id, which is what the windows
count. With a state path, Drain3's own file persistence keeps a snapshot, so a restart
picks up the same ids: taken by `save`, which the detector calls once a window (with the
baseline, so the two stay consistent), not by Drain3 on every change, which re-serialises
every template each time a new one appears.
"""

from __future__ import annotations

from pathlib import Path

from drain3 import TemplateMiner
from drain3.file_persistence import FilePersistence
from drain3.masking import MaskingInstruction
from drain3.template_miner_config import TemplateMinerConfig

__all__ = ["Templates"]

_MASKS = [
    (r"((?<=[^A-Za-z0-9])|^)(\d{1,3}\.){3}\d{1,3}(:\d+)?((?=[^A-Za-z0-9])|$)", "IP"),
    (r"((?<=[^A-Za-z0-9])|^)blk_-?\d+((?=[^A-Za-z0-9])|$)", "BLOCK"),
    (r"((?<=[^A-Za-z0-9])|^)0x[a-fA-F0-9]+((?=[^A-Za-z0-9])|$)", "HEX"),
    (r"((?<=[^A-Za-z0-9])|^)[a-fA-F0-9]{16,}((?=[^A-Za-z0-9])|$)", "HEX"),
    (r"((?<=[^A-Za-z0-9])|^)[-+]?\d+(\.\d+)?((?=[^A-Za-z0-9])|$)", "NUM"),
]


class Templates:
    """Drain3 over messages; `add` returns the message's template id."""

    def __init__(self, state: Path | None = None, similarity: float = 0.4) -> None:
        config = TemplateMinerConfig()
        config.drain_sim_th = similarity
        config.masking_instructions = [MaskingInstruction(p, m) for p, m in _MASKS]
        config.snapshot_interval_minutes = 1
        self._persistence = None
        if state is not None:
            state.parent.mkdir(parents=True, exist_ok=True)
            self._persistence = FilePersistence(str(state))
        self._miner = TemplateMiner(self._persistence, config)  # loads the snapshot
        self._miner.persistence_handler = None  # snapshots are taken by `save`
        self._changed = False

    def add(self, message: str) -> int:
        result = self._miner.add_log_message(message)
        self._changed |= result["change_type"] != "none"
        return int(result["cluster_id"])

    def save(self) -> None:
        """Write the snapshot, if a template was created or changed since the last one."""
        if self._persistence is None or not self._changed:
            return
        self._miner.persistence_handler = self._persistence
        try:
            self._miner.save_state("templates changed")
        finally:
            self._miner.persistence_handler = None
        self._changed = False

    def match(self, message: str) -> int | None:
        """The id of the template `message` belongs to, without learning from it."""
        cluster = self._miner.match(message)
        return None if cluster is None else int(cluster.cluster_id)

    def template(self, template_id: int) -> str:
        cluster = self._miner.drain.id_to_cluster.get(template_id)
        return cluster.get_template() if cluster is not None else f"<template {template_id}>"

    def __len__(self) -> int:
        return len(self._miner.drain.clusters)
