"""Every option of train, pretrain, distill, compress and serve that is a setting agrees with its settings class.

The settings classes hold each setting's name, default and help once. train, pretrain, distill and
compress take theirs from the class (``hrlm.cli.app.option``); serve writes its own, because every
command would otherwise import the service (its extra, and a second), so this test is what keeps
serve's in step. It fails on any difference of name, default (as ``--help`` shows it) or help, on an
option that is neither a setting nor listed as an input here, and on a setting that no option
reaches unless it is listed as not exposed.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path, PurePath
from typing import Any

import pytest
import typer
import typer.main
from rich.markup import escape
from typer.testing import CliRunner

from hrlm.cli import app
from hrlm.cli.app import Precision, given, option
from hrlm.config import BatchConfig, CompressConfig, DistillConfig, PretrainConfig, TrainConfig


@dataclass(frozen=True)
class Spec:
    """A command and its settings class, with every exception to "one option per setting" spelled out."""

    settings: Any
    inputs: frozenset[str]  # options (and arguments) that are not settings: files, --out, --config, ...
    flags: dict[str, str] = field(default_factory=dict)  # setting -> flag, where not --name-with-dashes
    not_exposed: frozenset[str] = frozenset()  # settings deliberately without a flag


def _service_settings() -> Any:
    from hrlm.service.settings import ServiceSettings

    return ServiceSettings


SPECS = {
    "train": Spec(
        TrainConfig,
        frozenset({"data", "out", "config", "overwrite", "quiet"}),
        flags={"early_stopping_patience": "--patience"},
    ),
    "pretrain": Spec(PretrainConfig, frozenset({"corpus", "out", "config", "overwrite", "quiet"})),
    "batch": Spec(BatchConfig, frozenset({"model", "input", "output", "config", "quiet"})),
    "distill": Spec(DistillConfig, frozenset({"teacher", "data", "out", "unlabelled", "overwrite", "quiet"})),
    "compress": Spec(CompressConfig, frozenset({"model", "out", "data", "train_data", "overwrite", "quiet"})),
    "serve": Spec(
        _service_settings,  # called in the test: the service's import stays out of collection
        frozenset({"config"}),
        # set in the [serve] table of --config or as HRLM_* variables only
        not_exposed=frozenset(
            {
                "sqlite_synchronous",
                "migrate",
                "max_tokens",
                "explain_steps",
                "review_bulk_similarity",
                "explain_max_windows",
                "explain_max_texts",
                "max_queue",
                "max_texts",
                "max_text_chars",
                "allow_empty_texts",
                "max_body_bytes",
                "rate_limit",
                "rate_burst",
                "request_timeout_s",
                "auth_cache_s",
                "auth_fail_limit",
                "auth_fail_window_s",
                "metrics_open",
                "docs_open",
                "cors_origins",
                "store_text",
                "pii_patterns",
                "registry_poll_s",
                "review_confidence_below",
                "review_uncertainty",
                "review_uncertain_fraction",
                "review_random_fraction",
                "review_double_fraction",
                "review_holdout_fraction",
                "review_similarity",
                "review_fill_s",
                "review_lease_s",
                "train_data",
                "holdout_data",
                "promote_margin",
                "audit_data",
                "audit_group_cols",
                "audit_positive",
                "audit_min_impact_ratio",
                "audit_max_flip_rate",
                "job_runner",
                # monitoring and alerts (issue 16): a settings file's business, not a flag's
                "monitor_window",
                "monitor_every_s",
                "evaluate_every_s",
                "alert_webhook_url",
                "alert_webhook_secret",
                "monitor_min_volume",
                "monitor_sample",
                "alert_label_psi",
                "alert_confidence_psi",
                "alert_length_psi",
                "alert_unknown_rate_rise",
                "alert_embedding_drift",
                "alert_accuracy_drop",
                "alert_estimated_accuracy_drop",
                # retention (issue 16): the service applies it daily; `hrlm purge` reads it as its default age
                "retention_days",
                "redis_url",
                "job_stale_s",
                "access_log",
                "log_level",
            }
        ),
    ),
}


def _fields(settings: Any) -> dict[str, tuple[Any, str]]:
    """Each setting's default and help, from a settings dataclass or a pydantic settings class."""
    if dataclasses.is_dataclass(settings):
        return {f.name: (f.default, f.metadata.get("help", "")) for f in dataclasses.fields(settings)}
    return {name: (f.default, f.description or "") for name, f in settings.model_fields.items()}


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else str(value) if isinstance(value, PurePath) else value


def _shown(option: Any, ctx: typer.Context) -> tuple[str, str | None]:
    """The help and the default as ``--help`` shows them (no default: ``None``)."""
    record = option.get_help_record(ctx)
    assert record is not None
    match = re.fullmatch(r"(.*?)(?:  \[default: (.*)\])?", record[1], flags=re.DOTALL)
    assert match is not None
    return match[1], match[2]


def _setting_options(name: str) -> tuple[Spec, dict[str, tuple[Any, str]], list[Any], typer.Context]:
    """The command's options that are not inputs (Typer's click objects), and the settings they should match."""
    spec = SPECS[name]
    settings = spec.settings() if spec.settings is _service_settings else spec.settings
    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    options = [p for p in command.params if p.param_type_name == "option" and p.name not in spec.inputs]
    assert options, f"`hrlm {name}` has no options: is this still how Typer builds commands?"
    return spec, _fields(settings), options, typer.Context(command)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_setting_option_has_the_name_default_and_help_of_its_setting(name: str) -> None:
    spec, settings, options, ctx = _setting_options(name)
    for opt in options:
        where = f"`hrlm {name} {opt.opts[0]}`"
        assert opt.name in settings, f"{where} is not a setting; list it in SPECS[{name!r}].inputs if it is an input"
        default, help_text = settings[opt.name]
        assert help_text, f"setting {opt.name} of {name} has no help text"
        flag = spec.flags.get(opt.name, "--" + opt.name.replace("_", "-"))
        assert opt.opts == [flag], f"{where}: the flag of setting {opt.name} is {flag}"
        assert _plain(opt.default) == default, f"{where}: default {opt.default!r}, the setting's is {default!r}"
        shown_help, shown_default = _shown(opt, ctx)
        assert shown_help == help_text, f"{where}: help {shown_help!r}, the setting's is {help_text!r}"
        assert escape(help_text) == help_text, f"{where}: rich markup would eat part of {help_text!r}"
        if default is None or default is False:  # nothing to show: the help may say what unset means
            assert shown_default is None, f"{where} shows a default of {shown_default!r}"
        else:
            expected = opt.opts[0].removeprefix("--") if default is True else str(default)
            assert shown_default == expected, f"{where} shows the default {shown_default!r}, not {expected!r}"
            assert "default" not in help_text.lower(), f"{where}: the default is shown; the help repeats it"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_setting_is_an_option_or_listed_as_not_exposed(name: str) -> None:
    spec, settings, options, _ = _setting_options(name)
    exposed = {opt.name for opt in options}
    assert not spec.not_exposed - set(settings), f"SPECS[{name!r}].not_exposed names no setting of {name}"
    assert not spec.not_exposed & exposed, f"SPECS[{name!r}].not_exposed lists settings that have a flag"
    assert not set(spec.flags) - exposed, f"SPECS[{name!r}].flags names a setting without a flag"
    missing = set(settings) - exposed - spec.not_exposed
    assert not missing, f"settings without a flag of `hrlm {name}`: {sorted(missing)}; add one or list them"


def test_given_keeps_only_the_flags_on_the_command_line() -> None:
    toy = typer.Typer()
    seen: dict[str, Any] = {}

    @toy.command()
    def run(
        ctx: typer.Context,
        epochs: float = option(TrainConfig, "epochs"),
        lr: float = option(TrainConfig, "lr"),
        precision: Precision = option(TrainConfig, "precision"),
        base: Path | None = option(TrainConfig, "base"),
        strict: bool = option(TrainConfig, "strict", "--strict"),
        other: int = typer.Option(1),
    ) -> None:
        seen.update(given(ctx, TrainConfig.names()))

    result = CliRunner().invoke(toy, ["--lr", "0.0001", "--precision", "bf16", "--base", "enc", "--other", "2"])
    assert result.exit_code == 0, result.output
    # --lr at its default value is still given: it must beat a TOML file; --other is no setting
    assert seen == {"lr": 1e-4, "precision": "bf16", "base": "enc"}


def test_flags_beat_the_toml_file_which_beats_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hrlm.training

    seen: list[TrainConfig] = []

    def fake_train(data: Any, out: Any, cfg: TrainConfig, **kwargs: Any) -> Any:
        seen.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr(hrlm.training, "train", fake_train)
    toml = tmp_path / "run.toml"
    toml.write_text("[train]\nepochs = 2\nlr = 3e-5\nbatch_size = 8\nstrict = true\n")
    args = ["train", "x.csv", "--out", str(tmp_path / "m"), "--config", str(toml), "--lr", "1e-4", "--patience", "5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = seen[0]
    assert (cfg.epochs, cfg.batch_size, cfg.strict) == (2.0, 8, True)  # the file beats the defaults
    assert cfg.lr == 1e-4 and cfg.early_stopping_patience == 5  # flags beat the file, even at the default value
    assert cfg.max_length == TrainConfig().max_length  # neither: the default
