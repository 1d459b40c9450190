"""A tool call's status is not indexed: no query looks calls up by it, and an index on it
made every call's settling UPDATE a new row version in all of the table's indexes (no HOT
update), on the hot path of every tool call.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agent_tool_calls") as batch:
        batch.drop_index(op.f("ix_agent_tool_calls_status"))


def downgrade() -> None:
    with op.batch_alter_table("agent_tool_calls") as batch:
        batch.create_index(op.f("ix_agent_tool_calls_status"), ["status"])
