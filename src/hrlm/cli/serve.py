"""CLI commands of the REST service: ``serve``, ``users add|list|revoke`` and ``db upgrade``.

Registered on :data:`hrlm.cli.app.app` when :mod:`hrlm.cli.app` is imported.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from hrlm.cli.app import app, err_console, given, handles_errors, out_console
from hrlm.config import BACKEND_HELP

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from hrlm.service.settings import ServiceSettings

# The options of `hrlm serve` cannot take their defaults and help from ServiceSettings (cli.app.option):
# every `hrlm` command imports this module, and hrlm.service needs the service's extra and costs about a
# second to import. So they are written here, once, and tests/cli/test_options.py checks them against it.
DB_URL_HELP = "Database URL: sqlite:///FILE or postgresql://USER@HOST/DB."
DB_HELP = f"{DB_URL_HELP} (default: $HRLM_DATABASE_URL, else sqlite:///hrlm.db)"  # where the flag's default is None
SERVE_CONFIG_HELP = r"TOML file whose \[serve] table holds service settings; HRLM_* variables and flags override it."

users_app = typer.Typer(help="API users of the service: add (prints a token), list, revoke.", no_args_is_help=True)
db_app = typer.Typer(help="The service's database: apply migrations.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(db_app, name="db")


@contextmanager
def migrated_store(config: Path | None, **flags: Any) -> Iterator[tuple[ServiceSettings, Engine]]:
    """The service settings (``[serve]`` of ``config`` < ``HRLM_*`` < ``flags``) and their migrated database.

    The engine is disposed when the block ends; ``None`` flags are ignored.
    """
    from hrlm.service.settings import ServiceSettings
    from hrlm.store import make_engine, upgrade

    settings = ServiceSettings.load(config, **flags)
    engine = make_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    try:
        upgrade(engine)
        yield settings, engine
    finally:
        engine.dispose()


@users_app.command("add")
@handles_errors
def users_add(
    name: Annotated[str, typer.Argument(help="User name (letters, digits, . _ @ -).")],
    role: Annotated[str, typer.Option(help="client (predict), reviewer (review queue) or admin (everything).")],
    database_url: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    config: Annotated[Path | None, typer.Option("--config", help=SERVE_CONFIG_HELP)] = None,
) -> None:
    """Create a user and print their API token, alone on the last line (it is shown only this once)."""
    from hrlm.store import create_user

    with migrated_store(config, database_url=database_url) as (_, engine):
        token = create_user(engine, name, role)
    typer.echo(f"created user {name} with role {role}; keep this token now, it is not shown again:")
    typer.echo(token)


@users_app.command("list")
@handles_errors
def users_list(
    database_url: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    config: Annotated[Path | None, typer.Option("--config", help=SERVE_CONFIG_HELP)] = None,
) -> None:
    """List users, their roles and whether they are revoked (tokens are never shown)."""
    from hrlm.store import list_users

    with migrated_store(config, database_url=database_url) as (_, engine):
        rows = list_users(engine)
    table = Table(title=f"{len(rows)} users")
    for col in ("name", "role", "created", "revoked", "active tokens"):
        table.add_column(col)
    for r in rows:
        revoked = f"{r['revoked_at']:%Y-%m-%d %H:%M}" if r["revoked_at"] else "-"
        table.add_row(r["name"], r["role"], f"{r['created_at']:%Y-%m-%d %H:%M}", revoked, str(r["active_tokens"]))
    out_console.print(table)


@users_app.command("revoke")
@handles_errors
def users_revoke(
    name: Annotated[str, typer.Argument(help="User to revoke.")],
    database_url: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    config: Annotated[Path | None, typer.Option("--config", help=SERVE_CONFIG_HELP)] = None,
) -> None:
    """Revoke a user and every token of theirs (a running service notices within auth_cache_s, 5 s)."""
    from hrlm.store import revoke_user

    with migrated_store(config, database_url=database_url) as (_, engine):
        n = revoke_user(engine, name)
    out_console.print(f"revoked user {escape(name)} ({n} token{'s' if n != 1 else ''})", soft_wrap=True)


@db_app.command("upgrade")
@handles_errors
def db_upgrade(
    database_url: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    config: Annotated[Path | None, typer.Option("--config", help=SERVE_CONFIG_HELP)] = None,
) -> None:
    """Apply the database migrations (hrlm serve also does at start)."""
    from hrlm.store.db import current_revision, describe

    with migrated_store(config, database_url=database_url) as (_, engine):
        out_console.print(
            f"{describe(engine)} is at revision {current_revision(engine)} (head)", highlight=False, soft_wrap=True
        )


@app.command()
@handles_errors
def serve(
    ctx: typer.Context,
    model: Annotated[
        Path | None, typer.Option(help="Model folder to serve. (default: the registry's production version)")
    ] = None,
    host: Annotated[
        str, typer.Option(help="Interface to bind; loopback keeps the service to this machine.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    config: Annotated[Path | None, typer.Option("--config", help=SERVE_CONFIG_HELP)] = None,
    database_url: Annotated[str, typer.Option(help=DB_URL_HELP)] = "sqlite:///hrlm.db",
    registry_dir: Annotated[
        Path,
        typer.Option(help="Folder of the model registry; without --model, its production version is served."),
    ] = Path("hrlm-models"),
    backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads of the model. (default: all cores)")] = None,
    batching: Annotated[
        bool, typer.Option("--batching/--no-batching", help="Micro-batch concurrent requests into one model call.")
    ] = True,
    max_batch: Annotated[int, typer.Option(help="Most texts in one model call.")] = 32,
    max_wait_ms: Annotated[float, typer.Option(help="Longest wait for a batch to fill, in milliseconds.")] = 5.0,
) -> None:
    """Serve a model over HTTP: /v1/predict, /v1/models, /healthz, /readyz, /metrics (see README).

    Each option is also the variable HRLM_<NAME> and a key of the --config file's serve table:
    flags win over variables, variables over the file, the file over the defaults shown.
    """
    import uvicorn

    from hrlm.service import create_app
    from hrlm.service.runtime import default_source
    from hrlm.service.settings import ServiceSettings
    from hrlm.store import make_engine, ping, upgrade

    settings = ServiceSettings.load(config, **given(ctx, ServiceSettings.model_fields))
    # check what can be checked before uvicorn starts, so a mistake is one line, not a traceback
    engine = make_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    try:
        upgrade(engine) if settings.migrate else ping(engine)
        ref = default_source(settings, engine).current()
    finally:
        engine.dispose()
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"[yellow]note:[/] binding {settings.host}: reachable beyond this machine; put TLS in front.")
    err_console.print(
        f"serving {ref.version} on http://{settings.host}:{settings.port} "
        f"(batching {'on' if settings.batching else 'off'}, database {settings.database_url.split('@')[-1]})",
        highlight=False,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        server_header=False,
        timeout_graceful_shutdown=30,
    )
