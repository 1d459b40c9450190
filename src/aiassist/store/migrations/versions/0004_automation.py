"""Automation: one run per idempotency key, the flow a run plays, dry runs.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agent_runs") as batch:
        batch.add_column(sa.Column("key", sa.String(200), nullable=True))
        batch.add_column(sa.Column("flow", sa.String(64), nullable=True))
        batch.add_column(
            sa.Column("dry_run", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.create_unique_constraint(op.f("uq_agent_runs_key"), ["key"])
        batch.create_index(op.f("ix_agent_runs_flow"), ["flow"])


def downgrade() -> None:
    with op.batch_alter_table("agent_runs") as batch:
        batch.drop_index(op.f("ix_agent_runs_flow"))
        batch.drop_constraint(op.f("uq_agent_runs_key"), type_="unique")
        batch.drop_column("dry_run")
        batch.drop_column("flow")
        batch.drop_column("key")
