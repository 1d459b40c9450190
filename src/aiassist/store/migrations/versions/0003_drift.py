"""API drift guard: field profiles per endpoint and version, incidents, version routes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "drift_profiles",
        sa.Column("endpoint", sa.String(200), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("observations", sa.BigInteger(), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("updated_at", When, nullable=False),
        sa.PrimaryKeyConstraint("endpoint", "version", name=op.f("pk_drift_profiles")),
    )
    op.create_table(
        "drift_incidents",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("endpoint", sa.String(200), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("stable_version", sa.String(64), nullable=False),
        sa.Column("detected_at", When, nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("explanation", sa.String(1000), nullable=False),
        sa.Column("observations", sa.BigInteger(), nullable=False),
        sa.Column("acknowledged_at", When, nullable=True),
        sa.Column("acknowledged_by", sa.String(100), nullable=True),
        sa.Column("note", sa.String(500), nullable=True),
        sa.Column("resolved_at", When, nullable=True),
        sa.Column("resolved_by", sa.String(100), nullable=True),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_incidents")),
    )
    op.create_index(op.f("ix_drift_incidents_version"), "drift_incidents", ["version"])
    op.create_index(op.f("ix_drift_incidents_status"), "drift_incidents", ["status"])
    op.create_index(op.f("ix_drift_incidents_detected_at"), "drift_incidents", ["detected_at"])
    op.create_table(
        "drift_routes",
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("incident_id", sa.BigInteger(), nullable=True),
        sa.Column("since", When, nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_drift_routes")),
    )


def downgrade() -> None:
    op.drop_table("drift_routes")
    op.drop_table("drift_incidents")
    op.drop_table("drift_profiles")
