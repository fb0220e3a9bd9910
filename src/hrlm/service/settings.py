"""Settings of the REST service: defaults < a TOML file's ``[serve]`` table < ``HRLM_*`` variables < flags.

Built by :meth:`ServiceSettings.load` (or directly, in tests) and handed to ``create_app``; nothing
reads the environment at import time. An unknown key in the TOML file is an error.

Example:
    >>> ServiceSettings(model="runs/router", max_batch=16).max_batch
    16
"""

from __future__ import annotations

import contextvars
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from hrlm.config import BACKEND_HELP, BACKENDS, check_choice, load_toml
from hrlm.errors import ConfigError
from hrlm.lifecycle.settings import LifecycleSettings
from hrlm.pii import compile_patterns

if TYPE_CHECKING:
    from hrlm.monitoring import MonitorSettings

# the [serve] table of the file ServiceSettings.load reads, for the duration of that call
_TOML: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("hrlm_serve_toml", default=None)


class ServiceSettings(BaseSettings):
    """Every setting of ``hrlm serve``; each is also the environment variable ``HRLM_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="HRLM_", extra="forbid", validate_default=True)

    # what is served, and where
    model: str | None = Field(
        default=None, description="Model folder to serve. (default: the registry's production version)"
    )
    host: str = Field(default="127.0.0.1", description="Interface to bind; loopback keeps the service to this machine.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port to listen on.")
    database_url: str = Field(
        default="sqlite:///hrlm.db", description="Database URL: sqlite:///FILE or postgresql://USER@HOST/DB."
    )
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = Field(
        default="FULL", description="SQLite's synchronous pragma: FULL loses no committed record on a power cut."
    )
    migrate: bool = Field(default=True, description="Run the database migrations at start.")
    # the model
    backend: str = Field(default="auto", description=BACKEND_HELP)
    threads: int | None = Field(default=None, ge=1, description="CPU threads of the model. (default: all cores)")
    max_tokens: int | None = Field(
        default=None,
        ge=64,
        description="Token budget of one forward pass. (default: measured on this machine, hrlm.inference.calibrate)",
    )
    # explanations ("explain": true, the review page's evidence)
    explain_steps: int = Field(
        default=16,
        ge=2,
        le=512,
        description="Points along the integrated-gradients path of an explanation (more: closer attributions, slower).",
    )
    explain_max_windows: int = Field(
        default=4, ge=1, le=64, description="Most windows of one text an explanation attributes (the rest score 0)."
    )
    explain_max_texts: int = Field(
        default=8, ge=1, le=1000, description='Most texts of one /v1/predict request with "explain": true.'
    )
    # micro-batching
    batching: bool = Field(default=True, description="Micro-batch concurrent requests into one model call.")
    max_batch: int = Field(default=32, ge=1, le=4096, description="Most texts in one model call.")
    max_wait_ms: float = Field(
        default=5.0, ge=0, le=1000, description="Longest wait for a batch to fill, in milliseconds."
    )
    max_queue: int = Field(default=2048, ge=1, description="Most texts waiting for the model; more get 503.")
    # limits
    max_texts: int = Field(default=64, ge=1, le=10_000, description="Most texts in one request.")
    max_text_chars: int = Field(default=20_000, ge=1, description="Longest text, in characters.")
    allow_empty_texts: bool = Field(
        default=False,
        description="Predict texts with nothing visible (empty, white space, control characters); default: 422.",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Largest request body, in bytes.")
    rate_limit: float = Field(default=600.0, ge=0, description="Requests per minute per token; 0 = no limit.")
    rate_burst: int = Field(default=60, ge=1, description="Requests a token may send at once before the rate applies.")
    request_timeout_s: float = Field(default=30.0, gt=0, description="Longest wait for an answer; then 504.")
    # security and storage
    auth_cache_s: float = Field(
        default=5.0, ge=0, description="How long a checked token is trusted without the database."
    )
    auth_fail_limit: int = Field(
        default=20,
        ge=0,
        description="Invalid API tokens one client address may send within auth_fail_window_s before it gets 429 "
        "(behind a proxy every client has the proxy's address); 0 = no limit.",
    )
    auth_fail_window_s: float = Field(
        default=60.0, gt=0, le=86_400, description="The window auth_fail_limit counts in, in seconds."
    )
    metrics_open: bool = Field(default=False, description="Serve /metrics without a token (default: admin only).")
    docs_open: bool = Field(
        default=False, description="Serve /docs and /openapi.json without a token (default: any token)."
    )
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS; none by default.")
    store_text: Literal["redacted", "raw", "none"] = Field(
        default="redacted", description="What text predictions keep."
    )
    pii_patterns: dict[str, str] = Field(
        default_factory=dict,
        description="The site's own PII patterns, {name: regex}, redacted as [NAME] before the built-in ones "
        "(store_text = redacted); HRLM_PII_PATTERNS takes them as JSON.",
    )
    # the model registry (issue 5): where registered and retrained model folders live
    registry_dir: str = Field(
        default="hrlm-models",
        description="Folder of the model registry; without --model, its production version is served.",
    )
    registry_poll_s: float = Field(
        default=5.0, ge=0, description="How often the service checks the registry's production version; 0 = never."
    )
    # the review queue
    review_confidence_below: float = Field(
        default=0.6, ge=0, le=1, description="Predictions less confident than this enter the review queue."
    )
    review_uncertainty: Literal["margin", "entropy"] = Field(
        default="margin", description="How uncertainty sampling ranks the other predictions."
    )
    review_uncertain_fraction: float = Field(
        default=0.1, ge=0, le=1, description="Share of the other predictions queued by uncertainty sampling."
    )
    review_random_fraction: float = Field(
        default=0.02, ge=0, le=1, description="Share of predictions queued at random, for unbiased measurement."
    )
    review_double_fraction: float = Field(
        default=0.1, ge=0, le=1, description="Share of queued items answered by two reviewers (agreement, kappa)."
    )
    review_holdout_fraction: float = Field(
        default=0.2, ge=0, le=1, description="Share of reviewed items kept out of retraining to measure models."
    )
    review_similarity: float = Field(
        default=0.8, gt=0, le=1, description="Word-shingle Jaccard similarity at which texts count as near-duplicates."
    )
    review_fill_s: float = Field(
        default=10.0, ge=0, description="How often new predictions are sorted into the review queue; 0 = on demand."
    )
    review_bulk_similarity: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Word-pair Jaccard similarity at which open items count as alike, to be answered together.",
    )
    review_lease_s: float = Field(default=600.0, gt=0, description="How long an item shown to a reviewer stays theirs.")
    # retraining
    train_data: str | None = Field(
        default=None, description="The original training data file retraining starts from (plus accepted feedback)."
    )
    holdout_data: str | None = Field(
        default=None, description="Fixed holdout file the promotion gate measures on; never trained on."
    )
    promote_margin: float = Field(
        default=0.005,
        ge=-1,
        le=1,
        description="How much a candidate's macro F1 must beat production's to be promoted (-1 promotes every "
        "candidate: simulations only).",
    )
    # the bias audit that gates promotion (unset audit_data: no audit)
    audit_data: str | None = Field(
        default=None,
        description="A file with texts and group columns that every retrained candidate is bias-audited on before "
        "promotion.",
    )
    audit_group_cols: list[str] = Field(
        default_factory=list, description="Group columns of audit_data (each, and their intersections, is audited)."
    )
    audit_positive: str | None = Field(default=None, description="The label that counts as selected in the audit.")
    audit_min_impact_ratio: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Lowest impact ratio a candidate may show for any category (0.8: the four-fifths rule).",
    )
    audit_max_flip_rate: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Most predictions the counterfactual probe (swapped gendered words) may change; unset: not gated.",
    )
    # monitoring and alerts
    monitor_window: Literal["hour", "day", "week"] = Field(
        default="day", description="Time window the monitor measures and alerts over."
    )
    monitor_every_s: float = Field(
        default=300.0, ge=0, description="How often the monitor checks the current window for alerts; 0 = never."
    )
    evaluate_every_s: float = Field(
        default=86_400.0,
        ge=0,
        description="How often production is measured on holdout_data (a job); 0 = never, or no holdout_data.",
    )
    alert_webhook_url: str | None = Field(default=None, description="URL each new alert is POSTed to (JSON).")
    alert_webhook_secret: str | None = Field(
        default=None, description="Key of the HMAC-SHA256 signature sent with each webhook call (X-Hrlm-Signature)."
    )
    monitor_min_volume: int = Field(
        default=50, ge=1, description="Predictions a window needs before the monitor judges it (shown either way)."
    )
    monitor_sample: int = Field(
        default=300, ge=10, description="Texts per window embedded for the embedding drift score (bounds its time)."
    )
    alert_label_psi: float = Field(
        default=0.25, gt=0, description="Alert when the predicted labels' PSI against the reference exceeds this."
    )
    alert_confidence_psi: float = Field(
        default=0.25,
        gt=0,
        description="Alert when the confidence distribution's PSI against the reference exceeds this.",
    )
    alert_length_psi: float = Field(
        default=0.25,
        gt=0,
        description="Alert when the text-length distribution's PSI against the reference exceeds this.",
    )
    alert_unknown_rate_rise: float = Field(
        default=0.02, gt=0, lt=1, description="Alert when the share of unknown tokens rises by more than this."
    )
    alert_embedding_drift: float = Field(
        default=0.55,
        gt=0.5,
        lt=1,
        description="Alert when the domain classifier's ROC AUC (current vs reference pooled vectors) exceeds this.",
    )
    alert_accuracy_drop: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="Alert when reviewed (or holdout) accuracy falls this far below the reference accuracy.",
    )
    alert_estimated_accuracy_drop: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="Alert when the label-free (CBPE) accuracy estimate falls this far below the reference accuracy.",
    )
    # retention
    retention_days: int | None = Field(
        default=None,
        ge=1,
        description="Remove stored texts of predictions and reviews (and reviewers' notes) older than this many "
        "days, once a day; ids, labels and the audit log stay. Unset: keep.",
    )
    job_runner: Literal["inprocess", "redis"] = Field(
        default="inprocess", description="inprocess (embedded default) or redis (an `hrlm worker` process runs jobs)."
    )
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis of the job queue (job_runner=redis).")
    job_stale_s: float = Field(
        default=60.0, gt=0, description="A running job without a heartbeat for this long is marked failed."
    )
    access_log: bool = Field(default=False, description="Log every request (uvicorn's access log).")
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="uvicorn's log level.")

    @field_validator("pii_patterns")
    @classmethod
    def _pii_patterns(cls, value: dict[str, str]) -> dict[str, str]:
        try:
            compile_patterns(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        check_choice("backend", value, BACKENDS)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, InitSettingsSource(settings_cls, _TOML.get() or {})

    def lifecycle(self) -> LifecycleSettings:
        """The settings retraining, the registry and background jobs read, taken from these."""
        names = {f.name for f in dataclasses.fields(LifecycleSettings)}
        return LifecycleSettings(**{k: v for k, v in self.model_dump().items() if k in names})

    def monitor_settings(self) -> MonitorSettings:
        """The monitor's window and alert thresholds, taken from these (``alert_label_psi`` -> ``label_psi``...)."""
        from hrlm.monitoring import MonitorSettings

        return MonitorSettings(
            window=self.monitor_window,
            min_volume=self.monitor_min_volume,
            sample_size=self.monitor_sample,
            label_psi=self.alert_label_psi,
            confidence_psi=self.alert_confidence_psi,
            length_psi=self.alert_length_psi,
            unknown_rate_rise=self.alert_unknown_rate_rise,
            embedding_drift=self.alert_embedding_drift,
            accuracy_drop=self.alert_accuracy_drop,
            estimated_accuracy_drop=self.alert_estimated_accuracy_drop,
        )

    @classmethod
    def load(cls, config: str | Path | None = None, **flags: Any) -> ServiceSettings:
        """Defaults, then the ``[serve]`` table of ``config``, then ``HRLM_*`` variables, then ``flags``.

        ``None`` flags are ignored. Raises :class:`ConfigError` naming the setting on a bad value
        or an unknown key.
        """
        toml = load_toml(config, section="serve") if config is not None else {}
        unknown = sorted(set(toml) - set(cls.model_fields))
        if unknown:
            raise ConfigError(
                f"unknown [serve] setting(s) {unknown} in {config}; valid keys are {sorted(cls.model_fields)}."
            )
        token = _TOML.set(toml)
        try:
            return cls(**{k: v for k, v in flags.items() if v is not None})
        except ValidationError as exc:
            raise ConfigError(_explain(exc)) from None
        finally:
            _TOML.reset(token)


def _explain(exc: ValidationError) -> str:
    """One line per bad setting, naming it as the environment variable and the TOML key."""
    parts = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]) or "settings"
        value = err.get("input")
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{name} = {value!r}: {msg} (HRLM_{name.upper()} or [serve] {name})")
    return "; ".join(parts)
