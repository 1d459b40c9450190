"""Training data from the database: each recorded outcome joined to its decision."""

from __future__ import annotations

from sqlalchemy import Engine, func, select

from aiassist.modules import AnyModule, Features
from aiassist.store.models import DecisionRecord, OutcomeRecord
from aiassist.training.base import Dataset, Trainer

__all__ = ["count_outcomes", "load_dataset"]


def load_dataset(
    db: Engine, module: AnyModule, trainer: Trainer, *, limit: int = 200_000
) -> Dataset:
    """The newest `limit` outcomes of `module` with their decisions' features, oldest first."""
    query = (
        select(
            OutcomeRecord.id,
            OutcomeRecord.created_at,
            OutcomeRecord.outcome,
            DecisionRecord.features,
        )
        .join(DecisionRecord, DecisionRecord.id == OutcomeRecord.decision_id)
        .where(OutcomeRecord.module == module.name)
        .order_by(OutcomeRecord.id.desc())
        .limit(limit)
    )
    with db.connect() as conn:
        rows = list(conn.execute(query))[::-1]
    features: list[Features] = []
    labels: list[float] = []
    for row in rows:
        features.append(module.Features.model_validate(row.features))
        labels.append(trainer.target(row.outcome))
    last = rows[-1].id if rows else None
    return Dataset.build(
        module, features, labels, at=[r.created_at for r in rows], last_outcome_id=last
    )


def count_outcomes(db: Engine, module: str, *, after_id: int = 0) -> int:
    """How many outcomes of `module` came after the outcome `after_id`."""
    query = select(func.count()).where(OutcomeRecord.module == module, OutcomeRecord.id > after_id)
    with db.connect() as conn:
        return int(conn.execute(query).scalar_one())
