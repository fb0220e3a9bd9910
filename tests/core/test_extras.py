"""`pip install hrlm` without extras: a missing extra is one line naming it; every import is declared."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from hrlm._extras import EXTRA_OF_MODULE, MissingExtraError, missing_extra, needs_extras
from hrlm.cli import app
from hrlm.cli.app import handles_errors
from hrlm.errors import HrlmError

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _extra_distributions(extra: str) -> set[str]:
    """The distributions an extra brings, self-references (hrlm[serve]) followed."""
    names: set[str] = set()
    for requirement in PYPROJECT["optional-dependencies"][extra]:
        if match := re.fullmatch(r"hrlm\[([\w,]+)\]", requirement):
            for inner in match.group(1).split(","):
                names |= _extra_distributions(inner)
        else:
            names.add(_name(requirement))
    return names


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> the files of src/hrlm that import it (standard library and hrlm left out)."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "src" / "hrlm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.partition(".")[0]
                if top not in sys.stdlib_module_names and top != "hrlm":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_missing_module_of_an_extra_names_the_extra_in_one_line() -> None:
    error = missing_extra(ModuleNotFoundError("No module named 'uvicorn'", name="uvicorn"), "hrlm serve")
    assert isinstance(error, HrlmError) and isinstance(error, ImportError)
    assert error.extra == "serve" and error.exit_code == 1
    assert str(error) == "hrlm serve needs the serve extra (uvicorn is not installed): pip install 'hrlm[serve]'"
    for module, extra in [("sqlalchemy.dialects", "serve"), ("psycopg", "postgres"), ("rq", "queue")]:
        found = missing_extra(ModuleNotFoundError(name=module), "x")
        assert found is not None and f"pip install 'hrlm[{extra}]'" in str(found)
    assert missing_extra(ModuleNotFoundError(name="onnxruntime.capi"), "x").extra == "onnx"  # type: ignore[union-attr]


def test_a_module_of_no_extra_is_raised_as_it_is() -> None:
    assert missing_extra(ModuleNotFoundError(name="torch"), "x") is None
    with pytest.raises(ModuleNotFoundError) as info, needs_extras("x"):
        raise ModuleNotFoundError("No module named 'nonexistent'", name="nonexistent")
    assert not isinstance(info.value, HrlmError)
    with (
        pytest.raises(MissingExtraError, match=r"hrlm\.store needs the serve extra") as caught,
        needs_extras("hrlm.store"),
    ):
        raise ModuleNotFoundError("No module named 'alembic'", name="alembic")
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)


def test_every_module_of_the_map_comes_with_its_extra() -> None:
    distributions = packages_distributions()
    for module, extra in EXTRA_OF_MODULE.items():
        names = {_name(d) for d in distributions.get(module, [])}
        assert names & _extra_distributions(extra), f"{module} ({names}) is not in the {extra} extra"


def test_every_third_party_import_under_src_is_declared() -> None:
    distributions = packages_distributions()
    declared = {_name(r) for r in PYPROJECT["dependencies"]}
    for extra in PYPROJECT["optional-dependencies"]:
        declared |= _extra_distributions(extra)
    undeclared = {
        module: sorted(files)
        for module, files in _third_party_imports().items()
        if not {_name(d) for d in distributions.get(module, [module])} & declared
    }
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_cli_turns_a_missing_extra_into_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` now fails as in a plain install
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert re.fullmatch(
        r"error: hrlm serve needs the serve extra \(uvicorn is not installed\): pip install 'hrlm\[serve\]'", lines[0]
    ), lines[0]


def test_cli_lets_a_module_of_no_extra_through() -> None:
    @handles_errors
    def broken() -> None:
        raise ModuleNotFoundError("No module named 'nonexistent'", name="nonexistent")

    command = typer.Typer()
    command.command()(broken)
    result = CliRunner().invoke(command, [])
    assert isinstance(result.exception, ModuleNotFoundError)


def test_packages_that_need_an_extra_say_which_at_import() -> None:
    # a fresh interpreter per case: sys.modules[name] = None makes `import name` fail as in a plain install
    script = """
import importlib, json, sys
package, blocked = sys.argv[1:]
sys.modules[blocked] = None
try:
    importlib.import_module(package)
except Exception as exc:
    print(json.dumps([type(exc).__name__, str(exc)]))
"""
    cases = [
        ("hrlm.service", "fastapi", "serve"),
        ("hrlm.store", "sqlalchemy", "serve"),
        ("hrlm.lifecycle", "sqlalchemy", "serve"),
        ("hrlm.review", "sqlalchemy", "serve"),
    ]
    for package, blocked, extra in cases:
        done = subprocess.run(
            [sys.executable, "-c", script, package, blocked], capture_output=True, text=True, check=True, timeout=120
        )
        kind, message = json.loads(done.stdout)
        assert kind == "MissingExtraError", (package, kind, message)
        assert f"({package}) needs the {extra} extra" in message
        assert message.endswith(f"({blocked} is not installed): pip install 'hrlm[{extra}]'")
