"""One audit chain per agent run: events carry their chain and their place in it.

The rows written before keep their hashes: they become the `main` chain, numbered in the
order they were written. The unique `(chain, seq)` replaces the unique `prev_hash` and
`hash` as what stops two writers appending the same link.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("chain", sa.String(100), nullable=False, server_default="main"))
        batch.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE audit_events SET seq = numbered.n FROM "
        "(SELECT id, row_number() OVER (ORDER BY id) AS n FROM audit_events) AS numbered "
        "WHERE audit_events.id = numbered.id"
    )
    with op.batch_alter_table("audit_events") as batch:
        batch.alter_column("chain", server_default=None)
        batch.alter_column("seq", existing_type=sa.BigInteger(), nullable=False)
        batch.drop_constraint(op.f("uq_audit_events_hash"), type_="unique")
        batch.drop_constraint(op.f("uq_audit_events_prev_hash"), type_="unique")
        batch.create_unique_constraint(op.f("uq_audit_events_chain_seq"), ["chain", "seq"])


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_constraint(op.f("uq_audit_events_chain_seq"), type_="unique")
        batch.create_unique_constraint(op.f("uq_audit_events_prev_hash"), ["prev_hash"])
        batch.create_unique_constraint(op.f("uq_audit_events_hash"), ["hash"])
        batch.drop_column("seq")
        batch.drop_column("chain")
