"""review_feedback: where an answer came from, its id there, and whether it was taken back

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

Answers arrive from hrlm's review page and from other tools (Label Studio's ML backend webhook):
``source`` names the tool (NULL: hrlm's own page) and ``external_id`` the answer's id there, so an
annotation updated or deleted in the tool changes the answer it became. An answer taken back (the
tool deleted it, or the reviewer undid it) keeps its row: ``withdrawn_at`` and ``withdrawn_by`` say
when and by whom, and withdrawn answers count nowhere (labels for retraining, agreement, stats).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("review_feedback", sa.Column("source", sa.String(30), nullable=True))
    op.add_column("review_feedback", sa.Column("external_id", sa.String(200), nullable=True))
    op.add_column("review_feedback", sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("review_feedback", sa.Column("withdrawn_by", sa.String(100), nullable=True))
    op.create_index("ix_review_feedback_source_external_id", "review_feedback", ["source", "external_id"])


def downgrade() -> None:
    op.drop_index("ix_review_feedback_source_external_id", table_name="review_feedback")
    with op.batch_alter_table("review_feedback") as batch:  # SQLite drops a column by copying the table
        for column in ("withdrawn_by", "withdrawn_at", "external_id", "source"):
            batch.drop_column(column)
