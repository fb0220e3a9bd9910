"""The database tables, as SQLAlchemy Core tables.

The schema itself is created and changed only by the Alembic migrations in ``migrations/``; these
definitions are what the code reads and writes, and a test checks that the two agree. Tables of
later features (review items, feedback, model versions, jobs) join this metadata with their own
migration.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    BigInteger,
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
    Column("request_id", String(64), nullable=False, index=True),
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
