"""Users, their roles and API tokens; every change is written to the audit log.

A token looks like ``hrlm_<key id>_<secret>``. The key id finds the token's row; only the SHA-256
of the whole token is stored, and it is compared in constant time. The secret has 256 bits of
entropy, so a plain hash (no slow KDF) is enough: nobody can guess it, even from the hash.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update

from hrlm.config import check_choice
from hrlm.errors import ConfigError, NotFound
from hrlm.store.tables import ROLES, api_tokens, audit_log, users, utcnow
from hrlm.text import check_storable

TOKEN_PREFIX = "hrlm"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")  # fullmatch: no trailing newline
_TOKEN = re.compile(r"^hrlm_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class Principal:
    """Who a valid token belongs to."""

    user_id: int
    name: str
    role: str


def hash_token(token: str) -> str:
    """SHA-256 of a token, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh token and its key id."""
    key_id = secrets.token_hex(6)
    return f"{TOKEN_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}", key_id


def audit(conn: Connection, actor: str, action: str, target: str | None = None, **detail: Any) -> None:
    """Append a row to the audit log inside the caller's transaction."""
    conn.execute(
        insert(audit_log).values(at=utcnow(), actor=actor, action=action, target=target, detail=detail or None)
    )


def create_user(engine: Engine, name: str, role: str, *, actor: str = "cli") -> str:
    """Create a user (or give a revoked one back its access) and return a new API token.

    The token is returned once and stored only as a hash.

    Raises:
        DataError: the name holds a character no database stores (NUL, a lone surrogate).
        ConfigError: the name or role is invalid, or an active user of that name exists.
    """
    check_storable("user name", name)
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"user name {name!r} is not valid; use up to 100 letters, digits and . _ @ -, "
            "starting with a letter or digit."
        )
    check_choice("role", role, ROLES)
    token, key_id = new_token()
    now = utcnow()
    with engine.begin() as conn:
        row = conn.execute(select(users.c.id, users.c.revoked_at).where(users.c.name == name)).first()
        if row is not None and row.revoked_at is None:
            raise ConfigError(
                f"user {name!r} exists; revoke it first (`hrlm users revoke {name}`) or choose another name."
            )
        if row is None:
            created = conn.execute(insert(users).values(name=name, role=role, created_at=now)).inserted_primary_key
            assert created is not None
            user_id = created[0]
        else:
            user_id = row.id
            conn.execute(update(users).where(users.c.id == user_id).values(role=role, revoked_at=None))
        conn.execute(
            insert(api_tokens).values(user_id=user_id, key_id=key_id, token_hash=hash_token(token), created_at=now)
        )
        audit(conn, actor, "token.create", name, role=role, key_id=key_id)
    return token


def list_users(engine: Engine) -> list[dict[str, Any]]:
    """Every user with role, creation time, revocation time and number of active tokens."""
    with engine.connect() as conn:
        rows = conn.execute(select(users).order_by(users.c.name)).mappings().all()
        counts: dict[int, int] = {}
        for (uid,) in conn.execute(select(api_tokens.c.user_id).where(api_tokens.c.revoked_at.is_(None))):
            counts[uid] = counts.get(uid, 0) + 1
    return [{**dict(r), "active_tokens": counts.get(r["id"], 0)} for r in rows]


def revoke_user(engine: Engine, name: str, *, actor: str = "cli") -> int:
    """Revoke a user and every token of theirs; return how many tokens were revoked.

    Raises:
        NotFound: no user has that name.
    """
    now = utcnow()
    with engine.begin() as conn:
        uid = conn.execute(select(users.c.id).where(users.c.name == name)).scalar()
        if uid is None:
            raise NotFound(f"no user named {name!r}; `hrlm users list` shows them.")
        conn.execute(update(users).where(users.c.id == uid).values(revoked_at=now))
        n = conn.execute(
            update(api_tokens)
            .where(api_tokens.c.user_id == uid, api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=now)
        ).rowcount
        audit(conn, actor, "token.revoke", name, tokens=n)
    return int(n or 0)


def parse_token(token: str) -> str | None:
    """The key id of a well-formed token, else ``None``."""
    m = _TOKEN.match(token)
    return m.group(1) if m else None


def authenticate(engine: Engine, token: str) -> tuple[Principal, str] | None:
    """The principal of a valid, unrevoked token and its stored hash; ``None`` for anything else."""
    key_id = parse_token(token)
    if key_id is None:
        return None
    query = (
        select(api_tokens.c.token_hash, users.c.id, users.c.name, users.c.role)
        .join(users, users.c.id == api_tokens.c.user_id)
        .where(api_tokens.c.key_id == key_id, api_tokens.c.revoked_at.is_(None), users.c.revoked_at.is_(None))
    )
    with engine.connect() as conn:
        row = conn.execute(query).first()
    if row is None or not hmac.compare_digest(row.token_hash, hash_token(token)):
        return None
    return Principal(row.id, row.name, row.role), row.token_hash
