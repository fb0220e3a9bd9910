"""The ``hrlm`` Typer app, its global options and what every command module shares.

Exit status: 0 on success, 1 for a user error (one line on stderr, no traceback unless
``--debug``), 2 for bad usage.

A flag that is a setting takes its name, default and help from the settings dataclass
(:func:`option`), and the command builds its config from the flags given (:func:`given`), so
``defaults < TOML file < flags`` holds and nothing is written twice; ``tests/cli/test_options.py``
checks every command against its class.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterable
from enum import Enum, StrEnum
from pathlib import PurePath
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from hrlm._version import __version__
from hrlm.errors import HrlmError

app = typer.Typer(
    name="hrlm",
    help="Fine-tune, evaluate and serve BERT-style models on HR text.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped into a file or a log, Rich assumes 80 columns and cuts the wide comparison tables
# (``hrlm compress``, ``hrlm evaluate``) down to ellipses; a terminal, or COLUMNS, keeps its own width.
out_console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160)
err_console = Console(stderr=True)
_state = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])


def handles_errors(func: F) -> F:
    """Turn an HrlmError into one line on stderr and exit status 1 (a traceback with --debug).

    A missing package of an extra (``pip install hrlm`` has no service, say) is such an error too: the
    line names the extra to install.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            try:
                return func(*args, **kwargs)
            except ModuleNotFoundError as exc:
                from hrlm._extras import missing_extra

                # a command's function is named after it: users_add is `hrlm users add`
                error = missing_extra(exc, f"hrlm {func.__name__.replace('_', ' ')}")
                if error is None:
                    raise
                raise error from exc
        except HrlmError as exc:
            if _state["debug"]:
                raise
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        out_console.print(f"hrlm {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    _state["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("hrlm").setLevel(logging.INFO if not debug else logging.DEBUG)


class Truncate(StrEnum):
    none = "none"
    head = "head"
    head_tail = "head+tail"


class Aggregate(StrEnum):
    mean = "mean"
    max = "max"


class Precision(StrEnum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def option_value(x: Any) -> Any:
    return x.value if isinstance(x, Enum) else x


def option(settings: type[Any], name: str, *flags: str, **kwargs: Any) -> Any:
    """A Typer option for the field ``name`` of a settings dataclass, with that field's default and help.

    Use it as the default of a parameter named like the field, and build the config from
    :func:`given`, which leaves out the flags not given so that a TOML file can still set them.
    ``flags`` (default ``--name-with-dashes``) and ``kwargs`` go to :func:`typer.Option`.

    Example:
        >>> @app.command()
        ... def run(ctx: typer.Context, epochs: float = option(TrainConfig, "epochs")) -> None:
        ...     cfg = TrainConfig.from_dict(given(ctx, TrainConfig.names()))  # doctest: +SKIP
    """
    spec = {f.name: f for f in dataclasses.fields(settings)}[name]
    return typer.Option(spec.default, *flags, help=spec.metadata["help"], **kwargs)


def given(ctx: typer.Context, names: Iterable[str]) -> dict[str, Any]:
    """The options among ``names`` given on the command line, by name; the values a config file yields to.

    An option left at its default is not given. Enum members become their values and paths strings.
    """
    wanted = set(names)
    return {
        name: str(value) if isinstance(value, PurePath) else option_value(value)
        for name, value in ctx.params.items()
        if name in wanted and _given(ctx, name)
    }


def _given(ctx: typer.Context, name: str) -> bool:
    # by the name of the ParameterSource: recent Typer brings its own copy of click, older Typer uses click
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def main() -> None:
    """Entry point of the ``hrlm`` script: the app with every command group registered."""
    import hrlm.cli  # noqa: F401  (importing the package registers the command modules on `app`)

    app()
