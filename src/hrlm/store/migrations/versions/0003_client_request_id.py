"""predictions.client_request_id: the X-Request-ID a client sent, kept beside the server's own request id

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

Before this revision the client's X-Request-ID became the stored request id, so two clients could
store their predictions under one id. The server now always makes its own (``request_id``) and
keeps the client's here; rows stored before keep what they had.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("predictions", sa.Column("client_request_id", sa.String(64), nullable=True))
    op.create_index("ix_predictions_client_request_id", "predictions", ["client_request_id"])


def downgrade() -> None:
    op.drop_index("ix_predictions_client_request_id", table_name="predictions")
    with op.batch_alter_table("predictions") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("client_request_id")
