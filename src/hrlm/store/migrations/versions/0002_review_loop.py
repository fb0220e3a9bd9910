"""model versions, stage events, review items, feedback, jobs; append-only audit log

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)

_PG_APPEND_ONLY = """
CREATE OR REPLACE FUNCTION hrlm_audit_log_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP;
END;
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(200), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("stage", sa.String(20), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("stage_changed_at", TS, nullable=False),
        sa.Column("parent", sa.String(200), nullable=True),
        sa.Column("origin", sa.String(20), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("gate", sa.JSON(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_model_versions"),
        sa.UniqueConstraint("version", name="uq_model_versions_version"),
    )
    op.create_index("ix_model_versions_stage", "model_versions", ["stage"])
    # at most one production version: the database refuses a second one, whatever the writers do
    production = sa.text("stage = 'production'")
    op.create_index(
        "uq_model_versions_production",
        "model_versions",
        ["stage"],
        unique=True,
        sqlite_where=production,
        postgresql_where=production,
    )
    op.create_table(
        "model_stage_events",
        sa.Column("id", BigId, nullable=False),
        sa.Column("version", sa.String(200), nullable=False),
        sa.Column("from_stage", sa.String(20), nullable=True),
        sa.Column("to_stage", sa.String(20), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["version"],
            ["model_versions.version"],
            name="fk_model_stage_events_version_model_versions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_model_stage_events"),
    )
    op.create_index("ix_model_stage_events_at", "model_stage_events", ["at"])
    op.create_table(
        "review_items",
        sa.Column("id", BigId, nullable=False),
        sa.Column("prediction_id", BigId, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("model_version", sa.String(200), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("text_hash", sa.String(64), nullable=False),
        sa.Column("suggestion", sa.Text(), nullable=False),
        sa.Column("output", sa.JSON(), nullable=False),
        sa.Column("reason", sa.String(20), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("reviews_needed", sa.Integer(), nullable=False),
        sa.Column("holdout", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("leased_by", sa.Integer(), nullable=True),
        sa.Column("leased_until", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["prediction_id"], ["predictions.id"], name="fk_review_items_prediction_id_predictions", ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["leased_by"], ["users.id"], name="fk_review_items_leased_by_users", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_review_items"),
        sa.UniqueConstraint("prediction_id", name="uq_review_items_prediction_id"),
    )
    op.create_index("ix_review_items_text_hash", "review_items", ["text_hash"])
    op.create_index("ix_review_items_state_score", "review_items", ["state", "score"])
    op.create_table(
        "review_feedback",
        sa.Column("id", BigId, nullable=False),
        sa.Column("item_id", BigId, nullable=False),
        sa.Column("reviewer_id", sa.Integer(), nullable=True),
        sa.Column("reviewer", sa.String(100), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("action", sa.String(10), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("previous_label", sa.Text(), nullable=True),
        sa.Column("model_version", sa.String(200), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["item_id"], ["review_items.id"], name="fk_review_feedback_item_id_review_items", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["reviewer_id"], ["users.id"], name="fk_review_feedback_reviewer_id_users", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_review_feedback"),
    )
    op.create_index("ix_review_feedback_item_id", "review_feedback", ["item_id"])
    op.create_index("ix_review_feedback_at", "review_feedback", ["at"])
    review_fill = op.create_table(
        "review_fill",
        sa.Column("name", sa.String(20), nullable=False),
        sa.Column("last_prediction_id", sa.BigInteger(), nullable=False),
        sa.Column("scanned", sa.BigInteger(), nullable=False),
        sa.Column("queued", sa.BigInteger(), nullable=False),
        sa.Column("skipped_no_text", sa.BigInteger(), nullable=False),
        sa.Column("skipped_duplicate", sa.BigInteger(), nullable=False),
        sa.Column("uncertain_credit", sa.Float(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_review_fill"),
    )
    # the queue filler's row exists from the start, so concurrent fillers only ever lock it, never race to create it
    op.bulk_insert(
        review_fill,
        [
            {
                "name": "fill",
                "last_prediction_id": 0,
                "scanned": 0,
                "queued": 0,
                "skipped_no_text": 0,
                "skipped_duplicate": 0,
                "uncertain_credit": 0.0,
                "updated_at": dt.datetime.now(dt.UTC),
            }
        ],
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(30), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("runner", sa.String(20), nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("heartbeat_at", TS, nullable=True),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_state", "jobs", ["state"])
    # the audit log is append-only: the database itself refuses to change or delete a row
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_APPEND_ONLY)
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
                "FOR EACH ROW EXECUTE FUNCTION hrlm_audit_log_append_only()"
            )
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
                f"BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: {verb} refused'); END"
            )


def downgrade() -> None:
    for verb in ("update", "delete"):
        if op.get_bind().dialect.name == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS audit_log_no_{verb} ON audit_log")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS audit_log_no_{verb}")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS hrlm_audit_log_append_only()")
    op.drop_index("ix_jobs_state", table_name="jobs")
    op.drop_table("jobs")
    op.drop_table("review_fill")
    op.drop_index("ix_review_feedback_at", table_name="review_feedback")
    op.drop_index("ix_review_feedback_item_id", table_name="review_feedback")
    op.drop_table("review_feedback")
    op.drop_index("ix_review_items_state_score", table_name="review_items")
    op.drop_index("ix_review_items_text_hash", table_name="review_items")
    op.drop_table("review_items")
    op.drop_index("ix_model_stage_events_at", table_name="model_stage_events")
    op.drop_table("model_stage_events")
    op.drop_index("uq_model_versions_production", table_name="model_versions")
    op.drop_index("ix_model_versions_stage", table_name="model_versions")
    op.drop_table("model_versions")
