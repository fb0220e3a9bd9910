"""The bias audit of the promotion gate: audit the candidate and production, reject a candidate that fails.

With ``audit_data`` set (and ``audit_group_cols``, ``audit_positive``), :func:`hrlm.lifecycle.retraining.retrain`
audits the candidate on that file after it is measured (:func:`hrlm.fairness.run_audit`: impact ratios
per group column and intersection, the counterfactual gender-swap probe). The candidate's
``audit.json`` and ``audit.html`` go into its ``report/`` folder (the model card reads
``report/audit.json``); production is audited on the same file for comparison; a candidate whose
audit fails ``audit_min_impact_ratio`` (or ``audit_max_flip_rate``) is rejected like one that scores lower.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hrlm.errors import ConfigError

if TYPE_CHECKING:
    from hrlm.lifecycle.registry import VersionInfo
    from hrlm.lifecycle.settings import LifecycleSettings

__all__ = ["audit_file", "format_audit", "gate_audit"]


def audit_file(settings: LifecycleSettings) -> Path | None:
    """The audit file when the gate audits, after checking that the group columns and the positive label are set."""
    if not settings.audit_data:
        return None
    path = Path(settings.audit_data).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"audit_data = {str(path)!r} is not a file; pass an existing file of texts and group columns "
            "(--audit-data FILE)."
        )
    if not settings.audit_group_cols:
        raise ConfigError(
            "audit_data is set but audit_group_cols is empty; name the group columns: --audit-group-col COL "
            "or HRLM_AUDIT_GROUP_COLS."
        )
    if not settings.audit_positive:
        raise ConfigError(
            "audit_data is set but audit_positive is not; name the label that counts as selected: "
            "--audit-positive LABEL or HRLM_AUDIT_POSITIVE."
        )
    return path


def gate_audit(
    gate: dict[str, Any],
    parent: VersionInfo,
    candidate_dir: Path,
    path: Path,
    settings: LifecycleSettings,
    text_col: str,
) -> None:
    """Audit the candidate (its ``report/audit.json`` and ``audit.html``) and production; reject a failing candidate.

    ``gate`` gets an ``audit`` entry (the thresholds and, per model, ``passed``, ``reasons``,
    ``min_impact_ratio`` and ``flip_rate``); a candidate whose audit fails turns the decision to
    ``reject`` with the audit's first reason.
    """
    from hrlm.fairness import run_audit, write_audit_report

    def audit(model_dir: Path, name: str) -> Any:
        return run_audit(
            model_dir,
            path,
            group_cols=list(settings.audit_group_cols),
            positive=str(settings.audit_positive),
            text_col=text_col,
            threshold=settings.audit_min_impact_ratio,
            max_flip_rate=settings.audit_max_flip_rate,
            model_name=name,
            threads=settings.threads,
            data_source=str(path),
        )

    def summary(result: Any) -> dict[str, Any]:
        ok, reasons = result.passed()
        cf = result.counterfactual or {}
        return {
            "passed": ok,
            "reasons": reasons,
            "min_impact_ratio": result.min_impact_ratio,
            "flip_rate": cf.get("flip_rate"),
        }

    candidate = audit(candidate_dir, candidate_dir.name)
    write_audit_report(candidate, candidate_dir / "report")
    production = audit(parent.path, parent.version)
    entry: dict[str, Any] = {
        "file": str(path),
        "group_cols": list(settings.audit_group_cols),
        "positive": settings.audit_positive,
        "min_impact_ratio": settings.audit_min_impact_ratio,
        "max_flip_rate": settings.audit_max_flip_rate,
        "candidate": summary(candidate),
        "production": summary(production),
    }
    gate["audit"] = entry
    if not entry["candidate"]["passed"]:
        failed = f"the candidate failed the bias audit: {entry['candidate']['reasons'][0]}"
        gate["reason"] = failed if gate["decision"] == "promote" else f"{gate['reason']}; and {failed}"
        gate["decision"] = "reject"


def format_audit(audit: dict[str, Any] | None, num: Callable[[Any], str]) -> list[str]:
    """The bias-audit part of ``gate.md``: the thresholds, a row per model, the reasons; nothing without an audit."""
    if not audit:
        return []
    flip = "" if audit["max_flip_rate"] is None else f", counterfactual flip rate at most {audit['max_flip_rate']:g}"
    lines = [
        "",
        "## Bias audit",
        "",
        f"On {Path(audit['file']).name}, groups {', '.join(audit['group_cols'])}, positive label "
        f"`{audit['positive']}`: every impact ratio at least {audit['min_impact_ratio']:g}{flip} "
        "(the candidate's audit.json and audit.html are beside this file).",
        "",
        "| model | passed | min impact ratio | flip rate |",
        "|---|---|---|---|",
    ]
    for who in ("candidate", "production"):
        row = audit[who]
        lines.append(f"| {who} | {row['passed']} | {num(row['min_impact_ratio'])} | {num(row['flip_rate'])} |")
    for who in ("candidate", "production"):
        if audit[who]["reasons"]:
            lines += ["", f"The {who}'s audit:", *(f"- {r}" for r in audit[who]["reasons"])]
    return lines
