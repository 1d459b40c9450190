"""Agent runs: runs, their conversation, tool calls (with intent records) and approvals.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "agent_runs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.Column("updated_at", When, nullable=False),
        sa.Column("principal", sa.String(100), nullable=False),
        sa.Column("scopes", sa.String(500), nullable=False),
        sa.Column("task", sa.Text(), nullable=False),
        sa.Column("tools", sa.JSON(), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("provider_options", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("max_steps", sa.Integer(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until", When, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_runs")),
    )
    op.create_index(op.f("ix_agent_runs_created_at"), "agent_runs", ["created_at"])
    op.create_index(op.f("ix_agent_runs_principal"), "agent_runs", ["principal"])
    op.create_index(op.f("ix_agent_runs_status"), "agent_runs", ["status"])
    op.create_table(
        "agent_messages",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.JSON(), nullable=True),
        sa.Column("tool_calls", sa.JSON(), nullable=True),
        sa.Column("call_id", sa.String(64), nullable=True),
        sa.Column("model", sa.String(100), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["agent_runs.id"], name="fk_agent_messages_run_id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_messages")),
        sa.UniqueConstraint("run_id", "seq", name=op.f("uq_agent_messages_run_id_seq")),
    )
    op.create_table(
        "agent_tool_calls",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("call_id", sa.String(64), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("tool", sa.String(64), nullable=False),
        sa.Column("arguments", sa.JSON(), nullable=False),
        sa.Column("risk", sa.String(16), nullable=True),
        sa.Column("idempotency_key", sa.String(64), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.Column("started_at", When, nullable=True),
        sa.Column("finished_at", When, nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["agent_runs.id"], name="fk_agent_tool_calls_run_id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_tool_calls")),
        sa.UniqueConstraint("run_id", "call_id", name=op.f("uq_agent_tool_calls_run_id_call_id")),
    )
    op.create_index(
        op.f("ix_agent_tool_calls_idempotency_key"), "agent_tool_calls", ["idempotency_key"]
    )
    op.create_index(op.f("ix_agent_tool_calls_status"), "agent_tool_calls", ["status"])
    op.create_table(
        "agent_approvals",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.Column("tool", sa.String(64), nullable=False),
        sa.Column("arguments", sa.JSON(), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("requested_by", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("decided_by", sa.String(100), nullable=True),
        sa.Column("decided_at", When, nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("edited_arguments", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["id"], ["agent_tool_calls.id"], name="fk_agent_approvals_id"),
        sa.ForeignKeyConstraint(["run_id"], ["agent_runs.id"], name="fk_agent_approvals_run_id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_approvals")),
    )
    op.create_index(op.f("ix_agent_approvals_created_at"), "agent_approvals", ["created_at"])
    op.create_index(op.f("ix_agent_approvals_run_id"), "agent_approvals", ["run_id"])
    op.create_index(op.f("ix_agent_approvals_status"), "agent_approvals", ["status"])


def downgrade() -> None:
    op.drop_table("agent_approvals")
    op.drop_table("agent_tool_calls")
    op.drop_table("agent_messages")
    op.drop_table("agent_runs")
