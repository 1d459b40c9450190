"""Generated normal logs, for the trainer's bootstrap: a syslog-like stream no one wrote.

The model learns what anomalies look like from faults spliced into normal logs
(`faults.py`). Real logs are the user's; before there are any, the daemon trains on logs
made here, whose shape is drawn from the seed:

- 3-12 components (`name[pid]:`), each with 2-8 message templates built from a systems
  vocabulary with one or two variable fields (numbers, IPs, user names);
- template frequencies follow a Zipf law, so a few are common and most are rare;
- some templates come in bursts (a session of several lines at once), with a mean burst
  length of 1-6 lines: real logs are overdispersed, and a model trained on even Poisson
  streams would take every burst for an incident;
- a heartbeat: one template every 5-40 lines, the regular line a missing heartbeat removes;
- a share of 0-5% of lines at error level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LogSpec", "generate"]

_WORDS = [
    "connection",
    "session",
    "request",
    "user",
    "client",
    "server",
    "worker",
    "job",
    "queue",
    "cache",
    "disk",
    "memory",
    "socket",
    "timeout",
    "retry",
    "opened",
    "closed",
    "accepted",
    "started",
    "stopped",
    "completed",
    "received",
    "sent",
    "failed",
    "refused",
    "reset",
    "check",
    "health",
    "status",
    "sync",
    "flush",
    "commit",
    "lock",
    "unlock",
    "read",
    "write",
    "block",
    "packet",
    "route",
    "token",
    "auth",
    "login",
    "logout",
    "mount",
    "scan",
    "update",
    "config",
    "reload",
    "signal",
    "thread",
    "pool",
    "buffer",
    "index",
    "replica",
    "leader",
    "follower",
    "heartbeat",
    "lease",
    "transfer",
    "upload",
]
_NAMES = [
    "sshd",
    "kernel",
    "cron",
    "httpd",
    "nginx",
    "postfix",
    "dhcpd",
    "ntpd",
    "systemd",
    "dockerd",
    "kubelet",
    "etcd",
    "DataNode",
    "NameNode",
    "scheduler",
    "gateway",
    "api",
    "worker",
    "billing",
    "auth",
]
_SLOTS = ("{num}", "{ip}", "user{num}", "port {num}", "id={num}")
#: Distinct values of a log's variable fields: Drain3 masks them, so what they are does not
#: change a template; few of them make lines repeat, and a repeated line is mined once.
_VALUES = 32


@dataclass(frozen=True)
class LogSpec:
    components: int = 6
    templates_per_component: int = 5
    #: Mean lines of a burst, for the templates that come in bursts.
    burst_length: float = 3.0
    heartbeat_every: int = 20
    error_share: float = 0.02

    @classmethod
    def draw(cls, rng: np.random.Generator) -> LogSpec:
        return cls(
            components=int(rng.integers(3, 13)),
            templates_per_component=int(rng.integers(2, 9)),
            burst_length=float(rng.uniform(1.0, 6.0)),
            heartbeat_every=int(rng.integers(5, 41)),
            error_share=float(rng.uniform(0.0, 0.05)),
        )


@dataclass(frozen=True)
class _Template:
    component: str
    text: str
    error: bool
    bursty: bool


def _templates(spec: LogSpec, rng: np.random.Generator) -> list[_Template]:
    names = rng.choice(_NAMES, size=min(spec.components, len(_NAMES)), replace=False)
    made = []
    for name in names:
        for _ in range(spec.templates_per_component):
            words = list(rng.choice(_WORDS, size=int(rng.integers(3, 8))))
            for _ in range(int(rng.integers(1, 3))):
                words.insert(int(rng.integers(len(words) + 1)), str(rng.choice(_SLOTS)))
            error = bool(rng.random() < 0.15)
            text = ("error: " if error else "") + " ".join(words)
            made.append(_Template(str(name), text, error, bool(rng.random() < 0.4)))
    return made


def generate(spec: LogSpec, lines: int, rng: np.random.Generator) -> list[str]:
    """`lines` lines of one generated log."""
    templates = _templates(spec, rng)
    normal = [t for t in templates if not t.error]
    errors = [t for t in templates if t.error] or normal
    weights = 1 / np.arange(1, len(normal) + 1) ** 1.1
    heartbeat = normal[int(rng.integers(len(normal)))]
    pids = {t.component: int(rng.integers(100, 30_000)) for t in templates}
    picks = rng.choice(len(normal), size=lines, p=weights / weights.sum())
    is_error = rng.random(lines) < spec.error_share
    error_picks = rng.integers(len(errors), size=lines)
    bursts = rng.geometric(1 / spec.burst_length, size=lines)
    numbers = rng.choice(rng.integers(1, 100_000, size=_VALUES), size=lines)
    ips = [".".join(map(str, o)) for o in rng.integers(1, 255, size=(_VALUES, 4))]
    ip_picks = rng.integers(_VALUES, size=lines)
    seconds = np.cumsum(rng.integers(0, 3, size=lines))
    out: list[str] = []
    for i in range(lines):
        if i % spec.heartbeat_every == 0:
            chosen = heartbeat
        else:
            chosen = errors[error_picks[i]] if is_error[i] else normal[picks[i]]
        line = _STAMP.format(*_clock(int(seconds[i])), chosen.component, pids[chosen.component])
        line += chosen.text.format(num=numbers[i], ip=ips[ip_picks[i]])
        repeat = int(bursts[i]) if chosen.bursty and chosen is not heartbeat else 1
        out.extend([line] * repeat)
    return out[:lines]


_STAMP = "Dec {:2d} {:02d}:{:02d}:{:02d} host {}[{}]: "


def _clock(second: int) -> tuple[int, int, int, int]:
    return 1 + second // 86_400 % 28, second // 3600 % 24, second // 60 % 60, second % 60
