"""The database tables, as SQLAlchemy Core tables.

The schema itself is created and changed only by the Alembic migrations in ``migrations/``; these
definitions are what the code reads and writes, and a test checks that the two agree. Migration
0002 adds the review loop: model versions and their stage history, review items, feedback and jobs,
and makes the audit log append-only (a trigger refuses UPDATE and DELETE).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

ROLES = ("client", "reviewer", "admin")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite makes only INTEGER PRIMARY KEY an alias of its row id (auto-increment); PostgreSQL gets a bigint.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> dt.datetime:
    """Now, as a timezone-aware UTC timestamp."""
    return dt.datetime.now(dt.UTC)


users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("role", String(20), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # the public part of a token, used to find its row; the secret part is only ever stored hashed
    Column("key_id", String(32), nullable=False, unique=True),
    Column("token_hash", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)

predictions = Table(
    "predictions",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("request_id", String(64), nullable=False, index=True),  # the server's own, unique per request
    Column("client_request_id", String(64), index=True),  # the X-Request-ID the client sent, if any (0003)
    Column("position", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="SET NULL")),
    Column("model_version", String(200), nullable=False, index=True),
    # the text after PII redaction, the raw text, or nothing, as the store_text policy says
    Column("text", Text),
    Column("label", Text, nullable=False),
    Column("confidence", Float, nullable=False),
    Column("output", JSON, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("batch_size", Integer, nullable=False),
    # when retention removed the text (0004); the row, its label and model version stay
    Column("text_purged_at", DateTime(timezone=True)),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(100), nullable=False),
    Column("action", String(50), nullable=False),
    Column("target", String(200)),
    Column("detail", JSON),
    Index("ix_audit_log_action_at", "action", "at"),
)

# -- the review loop (migration 0002) ------------------------------------------------------------

STAGES = ("candidate", "production", "archived", "rejected")
JOB_STATES = ("queued", "running", "succeeded", "failed")
REVIEW_ACTIONS = ("accept", "correct", "skip", "flag")

model_versions = Table(
    "model_versions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", String(200), nullable=False, unique=True),
    Column("path", Text, nullable=False),
    Column("stage", String(20), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("stage_changed_at", DateTime(timezone=True), nullable=False),
    # the version a retrain started from, and how the version came to be (register, retrain)
    Column("parent", String(200)),
    Column("origin", String(20), nullable=False),
    # headline metrics, and the gate's comparison with production for a retrained candidate
    Column("metrics", JSON),
    Column("gate", JSON),
    Column("note", Text),
    # at most one production version, whatever the writers do: a partial unique index (SQLite and PostgreSQL)
    Index(
        "uq_model_versions_production",
        "stage",
        unique=True,
        sqlite_where=text("stage = 'production'"),
        postgresql_where=text("stage = 'production'"),
    ),
)

model_stage_events = Table(
    "model_stage_events",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("version", String(200), ForeignKey("model_versions.version", ondelete="CASCADE"), nullable=False),
    Column("from_stage", String(20)),
    Column("to_stage", String(20), nullable=False),
    # what moved it: register, promote, reject, archive, rollback (rollback finds earlier productions by it)
    Column("action", String(20), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("actor", String(100), nullable=False),
    Column("reason", Text),
)

review_items = Table(
    "review_items",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("prediction_id", BigId, ForeignKey("predictions.id", ondelete="SET NULL"), unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("model_version", String(200), nullable=False),
    # the text as the predictions table keeps it (redacted by default), and a hash of its normalised form
    Column("text", Text, nullable=False),
    Column("text_hash", String(64), nullable=False, index=True),
    Column("suggestion", Text, nullable=False),
    Column("output", JSON, nullable=False),
    # why the item is in the queue (low_confidence, uncertainty, random) and its priority (higher first)
    Column("reason", String(20), nullable=False),
    Column("score", Float, nullable=False),
    Column("reviews_needed", Integer, nullable=False),
    # kept out of training, to measure retrained models on feedback
    Column("holdout", Boolean, nullable=False),
    # open until reviews_needed reviewers answered; flagged items leave the queue for an admin
    Column("state", String(20), nullable=False),
    Column("leased_by", Integer, ForeignKey("users.id", ondelete="SET NULL")),
    Column("leased_until", DateTime(timezone=True)),
    # when retention removed the text (0004): the text is then empty, the labels and answers stay
    Column("text_purged_at", DateTime(timezone=True)),
    Index("ix_review_items_state_score", "state", "score"),
)

review_feedback = Table(
    "review_feedback",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("item_id", BigId, ForeignKey("review_items.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("reviewer_id", Integer, ForeignKey("users.id", ondelete="SET NULL")),
    Column("reviewer", String(100), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("action", String(10), nullable=False),
    # the label the reviewer gave ("|"-joined for several), and the label the item had before
    Column("label", Text),
    Column("previous_label", Text),
    Column("model_version", String(200), nullable=False),
    # what the reviewer wrote, mostly why they flagged the item; removed by retention at note_purged_at (0004)
    Column("note", Text),
    Column("note_purged_at", DateTime(timezone=True)),
    # where the answer came from (NULL: hrlm's review page; "labelstudio") and its id there (0005)
    Column("source", String(30)),
    Column("external_id", String(200)),
    # an answer taken back keeps its row and counts nowhere (0005)
    Column("withdrawn_at", DateTime(timezone=True)),
    Column("withdrawn_by", String(100)),
    Index("ix_review_feedback_source_external_id", "source", "external_id"),
)

# one row per queue filler ("fill"): how far it has read the predictions, and what it skipped
review_fill = Table(
    "review_fill",
    metadata,
    Column("name", String(20), primary_key=True),
    Column("last_prediction_id", BigInteger, nullable=False),
    Column("scanned", BigInteger, nullable=False),
    Column("queued", BigInteger, nullable=False),
    Column("skipped_no_text", BigInteger, nullable=False),
    Column("skipped_duplicate", BigInteger, nullable=False),
    # uncertainty sampling's share not yet taken (a fraction of a prediction carries to the next fill)
    Column("uncertain_credit", Float, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("kind", String(30), nullable=False),
    Column("state", String(20), nullable=False, index=True),
    Column("runner", String(20), nullable=False),
    Column("actor", String(100), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    # a running job's worker touches heartbeat_at; a stale one means the worker died
    Column("heartbeat_at", DateTime(timezone=True)),
    Column("progress", Float, nullable=False),
    Column("message", Text),
    Column("params", JSON),
    Column("result", JSON),
    Column("error", Text),
)


# -- oversight (migration 0004) ------------------------------------------------------------------

ALERT_STATES = ("open", "resolved")

# what the monitor raised: a rule over a time window crossed its threshold; and its webhook delivery
alerts = Table(
    "alerts",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("rule", String(50), nullable=False),
    Column("model_version", String(200)),
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column("opened_at", DateTime(timezone=True), nullable=False),
    Column("state", String(20), nullable=False),
    Column("resolved_at", DateTime(timezone=True)),
    Column("value", Float),
    Column("threshold", Float),
    Column("message", Text, nullable=False),
    Column("detail", JSON),
    Column("delivered_at", DateTime(timezone=True)),
    Column("delivery_attempts", Integer, nullable=False, server_default="0"),
    Column("delivery_error", Text),
    Index("ix_alerts_state_opened_at", "state", "opened_at"),
    Index("ix_alerts_rule_window_start", "rule", "window_start"),
)

# a model measured on a fixed holdout file (the scheduled evaluation job), a point of the monitor's series
evaluations = Table(
    "evaluations",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("model_version", String(200), nullable=False, index=True),
    Column("data", Text, nullable=False),
    Column("data_fingerprint", String(64)),
    Column("n", Integer, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("job_id", String(36)),
)


# -- what each label means (migration 0006): every edit is a new version; the newest is shown -------

label_guidelines = Table(
    "label_guidelines",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("label", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("description", Text, nullable=False),
    Column("examples", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(100), nullable=False),
    UniqueConstraint("label", "version", name="uq_label_guidelines_label_version"),
)
# Full-text search of review_items.text (0006) lives outside these tables: SQLite's FTS5 table
# review_items_fts (kept by triggers) and PostgreSQL's GIN index on to_tsvector('simple', text).
