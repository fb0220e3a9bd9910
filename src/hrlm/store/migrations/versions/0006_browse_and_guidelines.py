"""Full-text search of review items, and label guidelines

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

Reviewers find items by words of their text: SQLite gets an FTS5 index kept by triggers (an external
content table over ``review_items``: the text is stored once), PostgreSQL a GIN index on the text's
``to_tsvector('simple', ...)``, the expression its queries use. ``label_guidelines`` holds what each
label means, versioned: every edit is a new row, the newest per label is the one shown.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_FTS_TRIGGERS = (
    "CREATE TRIGGER review_items_fts_insert AFTER INSERT ON review_items BEGIN "
    "INSERT INTO review_items_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER review_items_fts_delete AFTER DELETE ON review_items BEGIN "
    "INSERT INTO review_items_fts(review_items_fts, rowid, text) VALUES ('delete', old.id, old.text); END",
    "CREATE TRIGGER review_items_fts_update AFTER UPDATE OF text ON review_items BEGIN "
    "INSERT INTO review_items_fts(review_items_fts, rowid, text) VALUES ('delete', old.id, old.text); "
    "INSERT INTO review_items_fts(rowid, text) VALUES (new.id, new.text); END",
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE VIRTUAL TABLE review_items_fts USING fts5(text, content='review_items', content_rowid='id', "
            "tokenize='unicode61 remove_diacritics 2')"
        )
        for statement in _FTS_TRIGGERS:
            op.execute(statement)
        op.execute("INSERT INTO review_items_fts(review_items_fts) VALUES ('rebuild')")
    else:
        op.execute("CREATE INDEX ix_review_items_text_fts ON review_items USING gin (to_tsvector('simple', text))")
    op.create_table(
        "label_guidelines",
        sa.Column("id", _BIG_ID, primary_key=True),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("examples", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_label_guidelines"),
        sa.UniqueConstraint("label", "version", name="uq_label_guidelines_label_version"),
    )


def downgrade() -> None:
    op.drop_table("label_guidelines")
    if op.get_bind().dialect.name == "sqlite":
        for name in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS review_items_fts_{name}")
        op.execute("DROP TABLE IF EXISTS review_items_fts")
    else:
        op.execute("DROP INDEX IF EXISTS ix_review_items_text_fts")
