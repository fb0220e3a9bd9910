"""Oversight: alerts, scheduled holdout evaluations, and texts that retention may remove

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

``alerts`` holds what the monitor raised (a rule crossed its threshold over a time window) and
whether the webhook got it; ``evaluations`` holds the scheduled measurements of a model on the fixed
holdout, which join the monitor's time series. Retention (``hrlm purge``) removes old texts but keeps
the rows: ``text_purged_at`` says when a text was removed (a purged prediction's text is NULL, as with
``store_text = none``; a purged review item's is empty, the column staying NOT NULL so that SQLite
need not copy the table), and ``note_purged_at`` when a reviewer's note was.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", _BIG_ID, primary_key=True),
        sa.Column("rule", sa.String(50), nullable=False),
        sa.Column("model_version", sa.String(200)),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True)),
        sa.Column("value", sa.Float),
        sa.Column("threshold", sa.Float),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("detail", sa.JSON),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.Column("delivery_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("delivery_error", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
    )
    op.create_index("ix_alerts_state_opened_at", "alerts", ["state", "opened_at"])
    op.create_index("ix_alerts_rule_window_start", "alerts", ["rule", "window_start"])
    op.create_table(
        "evaluations",
        sa.Column("id", _BIG_ID, primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_version", sa.String(200), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("data_fingerprint", sa.String(64)),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("job_id", sa.String(36)),
        sa.PrimaryKeyConstraint("id", name="pk_evaluations"),
    )
    op.create_index("ix_evaluations_at", "evaluations", ["at"])
    op.create_index("ix_evaluations_model_version", "evaluations", ["model_version"])
    op.add_column("review_items", sa.Column("text_purged_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("predictions", sa.Column("text_purged_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("review_feedback", sa.Column("note_purged_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    for table, column in (
        ("review_feedback", "note_purged_at"),
        ("predictions", "text_purged_at"),
        ("review_items", "text_purged_at"),
    ):
        with op.batch_alter_table(table) as batch:  # SQLite drops a column by copying the table
            batch.drop_column(column)
    op.drop_index("ix_evaluations_model_version", table_name="evaluations")
    op.drop_index("ix_evaluations_at", table_name="evaluations")
    op.drop_table("evaluations")
    op.drop_index("ix_alerts_rule_window_start", table_name="alerts")
    op.drop_index("ix_alerts_state_opened_at", table_name="alerts")
    op.drop_table("alerts")
