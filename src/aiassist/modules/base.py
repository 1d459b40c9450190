"""The module contract: every decision module has the same five parts.

- `Features`: the bounded inputs (a Pydantic model; bad input is a clear 422).
- `Decision`: the answer, stamped with who answered (model version or fallback) and why.
- `fallback(features)`: the rule that answers whenever no model can.
- a model: `encode` turns features into the model's input row, `decode` turns the model's
  output row back into a decision. Serving sees only numbers; training lives elsewhere.
- `Outcome`: what actually happened, recorded so models are retrained and measured.

Adding a module is adding a package under `aiassist/modules/` that exposes `module`,
or a third-party package that registers one under the `aiassist.modules` entry point.
What else a module brings (its settings, its HTTP router, its CLI) it names on the class,
so the service and the CLI pick them up without naming any module.
"""

from __future__ import annotations

import importlib
import secrets
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from aiassist.settings import ModuleSettings

__all__ = [
    "Decision",
    "Features",
    "Module",
    "Outcome",
    "import_attribute",
    "new_decision_id",
]

Source = Literal["model", "fallback"]


def import_attribute(path: str) -> Any:
    """The object a module names as "package.module:attribute" (its trainer, router, CLI)."""
    module_name, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def new_decision_id() -> str:
    """128 random bits as 32 hex characters (a third of uuid4().hex's cost)."""
    return secrets.token_hex(16)


class Features(BaseModel):
    """Inputs of one decision. Subclasses bound every field; NaN and ±Infinity, which
    Python's JSON parser accepts, are refused at the field that holds them."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Outcome(BaseModel):
    """What happened after a decision. Subclasses name the observed result."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Decision(BaseModel):
    """The answer to one decision request; subclasses add the module's own fields.

    The decider stamps `decision_id`, `source` and `model_version`: modules only fill
    in the domain fields and the explanation.
    """

    decision_id: str = Field(
        default_factory=new_decision_id,
        max_length=64,
        description="Pass it back with the outcome so both are joined for training.",
    )
    source: Source = Field("fallback", description="Whether the model or the rule answered.")
    model_version: str | None = Field(None, description="Model version that answered, if any.")
    fallback_reason: str | None = Field(
        None,
        max_length=32,
        description="Why the fallback answered: no_model, model_error, or, when the SDK "
        "answered because the service could not: unreachable, timeout, breaker_open, ...",
    )
    explanation: str = Field("", max_length=500, description="Short reason: the main factors.")


F = TypeVar("F", bound=Features)
D = TypeVar("D", bound=Decision)
O = TypeVar("O", bound=Outcome)  # noqa: E741


class Module(ABC, Generic[F, D, O]):
    """One decision point. Instances are stateless and shared across threads."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Features: type[F]
    Decision: type[D]
    Outcome: type[O]
    #: Example features and outcome, for the OpenAPI docs and the quick tour.
    example: ClassVar[dict[str, Any]] = {}
    outcome_example: ClassVar[dict[str, Any]] = {}
    #: "package.module:attribute" of this module's `Trainer`, imported only by training code
    #: (the `train` extra), so serving never loads the training stack. None: no model.
    trainer: ClassVar[str | None] = None
    #: The module's own settings (`AIASSIST_<MODULE>_*`), listed by `aiassist settings`.
    settings: ClassVar[type[ModuleSettings] | None] = None
    #: "package.module:factory" of a function returning the module's extra `APIRouter`
    #: (beyond decide and outcome), mounted by the service. None: no extra endpoints.
    router: ClassVar[str | None] = None
    #: "package.module:attribute" of the module's Typer app, `aiassist <name> ...`.
    cli: ClassVar[str | None] = None

    @abstractmethod
    def fallback(self, features: F) -> D:
        """The rule answer: cheap, dependency-free, always available."""

    @abstractmethod
    def encode(self, features: F) -> list[float]:
        """The model's input row for these features."""

    @abstractmethod
    def decode(self, features: F, output: Sequence[float]) -> D:
        """The decision for one model output row."""

    def feature_names(self) -> list[str]:
        """Names of the entries of `encode`'s row, for manifests and explanations."""
        return list(self.Features.model_fields)
