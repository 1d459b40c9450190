"""The policy: what a run may call, decided outside the model and fail-closed.

Every tool call the model asks for is checked here before anything happens, in this order:

1. the tool must be in the run's allowlist, fixed when the run started (so nothing a tool
   returns, such as a page saying "you are now admin", can widen it) — else **deny**;
2. the tool must be known and of a known risk class — else **deny**;
3. the principal must hold every scope the tool requires — else **deny**;
4. rules, per tool and per argument (`refund` with `amount > 100` → **approve**); a rule on
   an argument the tool takes but that is missing or of the wrong type matches, so doubt
   leads to the stricter answer;
5. an `irreversible` tool always needs approval, whatever the rules say.

Rules come from code (`Rule(...)`) or YAML (`Policy.from_yaml`):

    write: allow            # or: approve (every write needs a person)
    rules:
      - tool: refund
        when: {arg: amount, op: ">", value: 100}
        action: approve
        reason: refunds above 100 need a person
      - tool: "*"
        when: {arg: email, op: matches, value: "@competitor\\\\.com$"}
        action: deny
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aiassist.agent.tools import Risk, Tool
from aiassist.store.keys import Principal

__all__ = [
    "Action",
    "Condition",
    "Policy",
    "PolicyError",
    "Rule",
    "Verdict",
    "is_service_identity",
    "service_identity",
]

_MISSING = object()
_MAX_RULES = 1000


class PolicyError(ValueError):
    """A policy file or rule is malformed; the message says where."""


class Action(StrEnum):
    ALLOW = "allow"
    APPROVE = "approve"  # a person must approve this exact call first
    DENY = "deny"


_STRICTNESS = {Action.ALLOW: 0, Action.APPROVE: 1, Action.DENY: 2}


_SERVICE = "service:"  # API key ids are hex: no key can take this prefix


def service_identity(name: str, scopes: Iterable[str]) -> Principal:
    """A principal for a service (a scheduler, a webhook) rather than an API key."""
    return Principal(f"{_SERVICE}{name}", name, frozenset(scopes))


def is_service_identity(key_id: str) -> bool:
    """True for a `service_identity`'s id: configured in the process, not an API key."""
    return key_id.startswith(_SERVICE)


Op = Literal["==", "!=", ">", ">=", "<", "<=", "in", "not_in", "matches"]
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "in": lambda a, b: a in b,
    "not_in": lambda a, b: a not in b,
    "matches": lambda a, b: isinstance(a, str) and re.search(b, a) is not None,
}


class Condition(BaseModel):
    """`arguments[arg] <op> value`; `arg` may be a dotted path into nested objects."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arg: str = Field(min_length=1, max_length=200)
    op: Op
    value: Any = None

    def holds(self, arguments: Mapping[str, Any], parameters: Iterable[str] = ()) -> bool:
        """True when the condition holds, or when it cannot be evaluated (fail-closed).

        A condition on an argument the tool does not take (a `*` rule about `email` on a
        tool without one) does not apply; a taken argument that is missing, or of a type
        the comparison cannot handle, counts as holding.
        """
        if self.arg.split(".", 1)[0] not in parameters and self.arg not in arguments:
            return False
        current: Any = arguments
        for part in self.arg.split("."):
            current = current.get(part, _MISSING) if isinstance(current, Mapping) else _MISSING
            if current is _MISSING:
                return True
        try:
            return bool(_COMPARE[self.op](current, self.value))
        except (TypeError, re.error):
            return True


class Rule(BaseModel):
    """When `tool` (or `*`) is called and every `when` condition holds, take `action`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tool: str = Field(min_length=1, max_length=64)
    action: Action
    when: tuple[Condition, ...] = ()
    reason: str = Field("", max_length=500)

    def applies(
        self, tool: str, arguments: Mapping[str, Any], parameters: Iterable[str] = ()
    ) -> bool:
        names = frozenset(parameters)
        return self.tool in ("*", tool) and all(c.holds(arguments, names) for c in self.when)

    def describe(self) -> str:
        conditions = " and ".join(f"{c.arg} {c.op} {c.value!r}" for c in self.when)
        return f"{self.tool}{f' when {conditions}' if conditions else ''} -> {self.action}"


class _PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    write: Literal["allow", "approve"] = "allow"
    rules: list[_RuleFile] = Field(default_factory=list, max_length=_MAX_RULES)


class _RuleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tool: str = Field(min_length=1, max_length=64)
    action: Action
    when: Condition | list[Condition] = Field(default_factory=list)
    reason: str = Field("", max_length=500)

    def rule(self) -> Rule:
        when = self.when if isinstance(self.when, list) else [self.when]
        return Rule(tool=self.tool, action=self.action, when=tuple(when), reason=self.reason)


_PolicyFile.model_rebuild()


@dataclass(frozen=True)
class Verdict:
    """The policy's answer for one call, with the reason shown to people and to the model."""

    action: Action
    reason: str
    rule: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action.value, "reason": self.reason, "rule": self.rule}


@dataclass(frozen=True)
class Policy:
    """Rules plus the default for `write` tools. The default policy: reads and writes in the
    allowlist run, irreversible calls wait for approval, anything unknown is denied."""

    rules: tuple[Rule, ...] = ()
    write: Action = Action.ALLOW
    _by_tool: dict[str, tuple[Rule, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.write not in (Action.ALLOW, Action.APPROVE):
            raise PolicyError("the default for write tools is 'allow' or 'approve'")
        by_tool: dict[str, list[Rule]] = {}
        for rule in self.rules:
            by_tool.setdefault(rule.tool, []).append(rule)
        object.__setattr__(self, "_by_tool", {k: tuple(v) for k, v in by_tool.items()})

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "policy") -> Policy:
        try:
            data = yaml.safe_load(text) or {}
            parsed = _PolicyFile.model_validate(data)
        except yaml.YAMLError as exc:
            raise PolicyError(f"{source}: not valid YAML: {exc}") from None
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'policy'}: {e['msg']}" for e in exc.errors()
            )
            raise PolicyError(f"{source}: {problems}") from None
        return cls(rules=tuple(r.rule() for r in parsed.rules), write=Action(parsed.write))

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise PolicyError(f"cannot read the policy file {path}: {exc}") from None
        return cls.from_yaml(text, source=str(path))

    def decide(
        self,
        name: str,
        arguments: Mapping[str, Any],
        *,
        tool: Tool | None,
        principal: Principal,
        allowed: frozenset[str],
    ) -> Verdict:
        """The verdict for calling `name(arguments)` in a run limited to `allowed` tools."""
        if name not in allowed:
            return Verdict(Action.DENY, f"tool {name!r} is not allowed in this run")
        if tool is None:
            return Verdict(Action.DENY, f"tool {name!r} is unknown to this service")
        if not isinstance(tool.risk, Risk):
            return Verdict(Action.DENY, f"tool {name!r} has an unknown risk class")
        missing = sorted(s for s in tool.scopes if not principal.allows(s))
        if missing:
            return Verdict(
                Action.DENY, f"the run's principal lacks the scopes {', '.join(missing)}"
            )
        verdict = Verdict(Action.ALLOW, f"{tool.risk.value} tool allowed")
        if tool.risk is Risk.WRITE and self.write is Action.APPROVE:
            verdict = Verdict(Action.APPROVE, "every write needs approval")
        parameters = frozenset(tool.parameters.get("properties", {}))
        for rule in (*self._by_tool.get("*", ()), *self._by_tool.get(name, ())):
            if rule.applies(name, arguments, parameters) and (
                _STRICTNESS[rule.action] > _STRICTNESS[verdict.action]
            ):
                verdict = Verdict(rule.action, rule.reason or rule.describe(), rule.describe())
        if tool.risk is Risk.IRREVERSIBLE and verdict.action is Action.ALLOW:
            verdict = Verdict(Action.APPROVE, "irreversible: a person must approve it")
        return verdict
