"""What the monitor judges and when: the window, the volume below which a window is not judged, and
each alert rule's threshold.

Fields and defaults (``hrlm monitor`` and the service map their own settings onto these; the
service's names are in brackets):

- ``window`` (``monitor_window``) = ``"day"``: ``hour``, ``day`` or ``week``, UTC-aligned.
- ``min_volume`` (``monitor_min_volume``) = 50: a window with fewer predictions is shown but not
  judged; below ~50 a 20-class label distribution is mostly noise.
- ``label_psi`` (``alert_label_psi``) = 0.25, ``confidence_psi`` (``alert_confidence_psi``) = 0.25,
  ``length_psi`` (``alert_length_psi``) = 0.25: population stability index thresholds; 0.1 is the
  usual "moderate" and 0.25 the usual "significant" shift (Siddiqi, *Credit Risk Scorecards*, 2006).
  A window's PSI also has to clear its own sampling noise (see :func:`hrlm.monitoring.drift.psi_null_quantile`).
- ``unknown_rate_rise`` (``alert_unknown_rate_rise``) = 0.02: an absolute rise of the share of
  WordPiece ``[UNK]`` tokens over the reference's (2 points: text in a script or alphabet the
  vocabulary does not hold).
- ``embedding_drift`` (``alert_embedding_drift``) = 0.55: the ROC AUC of a domain classifier that
  tells current pooled vectors from the reference's; 0.55 is Evidently's default for this method.
  The AUC also has to clear its 99.9% null quantile for the sample sizes at hand.
- ``accuracy_drop`` (``alert_accuracy_drop``) = 0.05: reviewed random-slice accuracy below the
  reference by more than this, judged only when the upper end of its 99.9% Wilson interval is below
  the reference accuracy (the drop is not noise); a scheduled holdout evaluation below the reference by more
  than this also alerts (``holdout_drop``).
- ``estimated_accuracy_drop`` (``alert_estimated_accuracy_drop``) = 0.05: the label-free (CBPE)
  estimate below the reference accuracy by more than this.
- ``sample_size`` (``monitor_sample``) = 300: texts per window that are embedded for the drift score
  (bounds its time: ~300 short texts take a few seconds on two CPU cores).
- ``min_reviewed`` = 30: a window needs this many reviewed random items for its accuracy to be judged.

Example:
    >>> MonitorSettings.from_mapping({"window": "hour", "other": 1}).window
    'hour'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hrlm.errors import ConfigError

WINDOWS = ("hour", "day", "week")


@dataclass(frozen=True)
class MonitorSettings:
    """The monitor's window and the alert rules' thresholds (see the module docstring for each default)."""

    window: str = "day"
    min_volume: int = 50
    label_psi: float = 0.25
    confidence_psi: float = 0.25
    length_psi: float = 0.25
    unknown_rate_rise: float = 0.02
    embedding_drift: float = 0.55
    accuracy_drop: float = 0.05
    estimated_accuracy_drop: float = 0.05
    sample_size: int = 300
    min_reviewed: int = 30

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise ConfigError(f"window = {self.window!r}: must be one of {', '.join(WINDOWS)}.")
        for name in ("min_volume", "min_reviewed"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} = {getattr(self, name)!r}: must be at least 1.")
        if self.sample_size < 10:
            raise ConfigError(f"sample_size = {self.sample_size!r}: must be at least 10 texts.")
        for name in ("label_psi", "confidence_psi", "length_psi"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} = {getattr(self, name)!r}: must be above 0 (0.25 is a significant shift).")
        for name in ("unknown_rate_rise", "accuracy_drop", "estimated_accuracy_drop"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"{name} = {getattr(self, name)!r}: must be between 0 and 1 (a share).")
        if not 0.5 < self.embedding_drift < 1:
            raise ConfigError(
                f"embedding_drift = {self.embedding_drift!r}: must be between 0.5 and 1 (a ROC AUC; 0.55 is usual)."
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> MonitorSettings:
        """Build from plain data, ignoring keys that are not fields (a whole settings file may be passed).

        Raises:
            ConfigError: a value out of range, naming the field.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in names and v is not None})

    def replace(self, **changes: Any) -> MonitorSettings:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data."""
        return dataclasses.asdict(self)
