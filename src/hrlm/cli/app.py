"""The ``hrlm`` Typer app, its global options and what every command module shares.

Exit status: 0 on success, 1 for a user error (one line on stderr, no traceback unless
``--debug``), 2 for bad usage.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from enum import Enum, StrEnum
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
out_console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])


def handles_errors(func: F) -> F:
    """Turn an HrlmError into one line on stderr and exit status 1 (a traceback with --debug)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
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


BACKEND_HELP = (
    "Inference backend: auto, torch-fp32, torch-bf16, torch-fp16 (CUDA), torch-int8, onnx-fp32, onnx-int8. "
    "auto uses a quantized one only where `hrlm compress` recorded a passing accuracy check."
)


def main() -> None:
    """Entry point of the ``hrlm`` script: the app with every command group registered."""
    import hrlm.cli  # noqa: F401  (importing the package registers the command modules on `app`)

    app()
