"""Storage: SQLAlchemy 2 tables, engines and Alembic migrations (SQLite by default, PostgreSQL by URL).

Modules: ``tables`` (the schema as the code sees it), ``db`` (engines, ``upgrade``, ``ping``),
``users`` (users, roles, hashed API tokens, audit log), ``records`` (prediction rows). The
migrations under ``migrations/`` ship inside the package, so ``hrlm db upgrade`` works from a wheel.
"""

from __future__ import annotations

from hrlm._extras import needs_extras

with needs_extras("the store (hrlm.store)"):
    from hrlm.store.db import make_engine, normalize_url, ping, upgrade
    from hrlm.store.users import Principal, authenticate, create_user, list_users, revoke_user

__all__ = [
    "Principal",
    "authenticate",
    "create_user",
    "list_users",
    "make_engine",
    "normalize_url",
    "ping",
    "revoke_user",
    "upgrade",
]
