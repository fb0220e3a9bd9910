"""An audit's report files: ``audit.json`` (the published-summary fields) and ``audit.html`` for people.

The page has the summary NYC LL144 asks for (date, data source and explanation, distribution
date), one table per grouping (each column, pairs, the intersection) with the flagged rows
highlighted and the small categories listed apart, and the counterfactual probe's table.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from hrlm._fs import atomic_file, write_json
from hrlm.fairness.audit import AuditResult
from hrlm.report import REPORT_CSS

__all__ = ["AUDIT_HTML", "AUDIT_JSON", "audit_html", "write_audit_report"]

AUDIT_JSON = "audit.json"
AUDIT_HTML = "audit.html"

_CSS = (
    REPORT_CSS
    + """
tr.flagged td { background: #ffebe9; color: #82071e; font-weight: 600; }
p.verdict-pass { color: #1a7f37; font-weight: 600; }
p.verdict-fail { color: #cf222e; font-weight: 600; }
p.note { color: #57606a; }
"""
)

_COLUMNS = (
    ("count", "Count"),
    ("share", "Share"),
    ("selection_rate", "Selection rate"),
    ("impact_ratio", "Impact ratio"),
    ("scoring_rate", "Scoring rate"),
    ("scoring_impact_ratio", "Scoring impact ratio"),
    ("accuracy", "Accuracy"),
    ("f1", "F1 (positive)"),
    ("ece", "ECE"),
)


def write_audit_report(result: AuditResult | dict[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``audit.json`` and ``audit.html`` into ``out_dir`` (created if needed; each file written atomically).

    Args:
        result: an :class:`AuditResult` or its ``to_dict()``.
        out_dir: the folder (a model folder's ``report/`` in the promotion gate).

    Returns:
        ``{"json": path, "html": path}``.

    Example:
        >>> result = run_audit("runs/cv", "cvs.csv", group_cols=["sex"], positive="yes")  # doctest: +SKIP
        >>> write_audit_report(result, "audit")  # doctest: +SKIP
        {'json': PosixPath('audit/audit.json'), 'html': PosixPath('audit/audit.html')}
    """
    data = result.to_dict() if isinstance(result, AuditResult) else result
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / AUDIT_JSON, "html": folder / AUDIT_HTML}
    write_json(paths["json"], data)
    with atomic_file(paths["html"]) as fh:
        fh.write(audit_html(data))
    return paths


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _table(rows: list[dict[str, Any]], extra: bool) -> list[str]:
    e = html.escape
    cols = [(k, n) for k, n in _COLUMNS if k not in ("accuracy", "f1", "ece") or extra]
    out = ["<table><thead><tr><th>Category</th>", *(f"<th>{e(n)}</th>" for _, n in cols), "<th>Flag</th></tr></thead>"]
    out.append("<tbody>")
    for row in rows:
        flag = "four-fifths" if row.get("flagged") else ("scoring" if row.get("scoring_flagged") else "")
        cls = ' class="flagged"' if row.get("flagged") else ""
        cells = "".join(f"<td>{e(_fmt(row.get(k)))}</td>" for k, _ in cols)
        out.append(f'<tr{cls}><td class="text">{e(str(row["category"]))}</td>{cells}<td>{e(flag)}</td></tr>')
    out.append("</tbody></table>")
    return out


def audit_html(data: dict[str, Any]) -> str:
    """The audit as a self-contained HTML page."""
    e = html.escape
    title = f"Bias audit of {data['model'].get('name')}"
    verdict = "passed" if data["passed"] else "failed"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="verdict-{"pass" if data["passed"] else "fail"}">The audit {verdict} (minimum impact ratio '
        f"{e(_fmt(data['min_impact_ratio']))}, threshold {e(_fmt(data['threshold']))}).</p>",
    ]
    if data["reasons"]:
        parts += ["<ul>", *(f"<li>{e(r)}</li>" for r in data["reasons"]), "</ul>"]
    summary = [
        ("Date of the audit", data["date"]),
        ("Model", data["model"].get("name")),
        ("Positive label (selected)", data["positive"]),
        ("Data source", data["data_source"]),
        ("Explanation of the data", data["explanation"]),
        ("Distribution date", data.get("distribution_date")),
        ("Texts audited", data["n"]),
        ("Overall selection rate", data["overall"].get("selection_rate")),
        ("Overall scoring rate", data["overall"].get("scoring_rate")),
        ("Median score", data["overall"].get("median_score")),
    ]
    summary += [("Accuracy", data["overall"]["accuracy"])] if "accuracy" in data["overall"] else []
    parts += ["<h2>Summary</h2>", "<table><tbody>"]
    parts += [f'<tr><th>{e(k)}</th><td class="text">{e(_fmt(v))}</td></tr>' for k, v in summary]
    parts.append("</tbody></table>")
    extra = data.get("label_col") is not None
    for g in data["groupings"]:
        parts.append(f"<h2>{e(g['name'])}</h2>")
        parts.append(
            f'<p class="note">{g["n"]} texts, {g["unknown"]} of unknown group (not a category); reference category '
            f"{e(str(g['reference']))}; minimum impact ratio {e(_fmt(g['min_impact_ratio']))}.</p>"
        )
        parts += _table(g["categories"], extra)
        if g["small_categories"]:
            parts.append(f'<p class="note">{e(g["small_note"] or "")}:</p>')
            parts += _table(g["small_categories"], extra)
    cf = data.get("counterfactual")
    if cf:
        parts += ["<h2>Counterfactual probe (gendered words swapped)</h2>"]
        parts.append(
            f'<p class="note">{cf["swapped"]} of {cf["texts"]} texts had a gendered word ({cf["swaps"]} swaps); '
            f"{cf['flipped']} changed label (flip rate {e(_fmt(cf['flip_rate']))}); mean change of the probability "
            f"of {e(str(cf['positive']))}: {e(_fmt(cf['mean_positive_change']))}.</p>"
        )
        parts.append("<table><thead><tr><th>Predicted label</th><th>Texts</th><th>Flipped</th><th>Flip rate</th></tr>")
        parts.append("</thead><tbody>")
        for label, row in cf["per_label"].items():
            parts.append(
                f'<tr><td class="text">{e(label)}</td><td>{row["n"]}</td><td>{row["flipped"]}</td>'
                f"<td>{e(_fmt(row['flip_rate']))}</td></tr>"
            )
        parts.append("</tbody></table>")
        if cf["examples"]:
            parts.append(
                "<table><thead><tr><th>Text</th><th>Swapped</th><th>Label</th><th>Then</th></tr></thead><tbody>"
            )
            for ex in cf["examples"]:
                parts.append(
                    f'<tr><td class="text">{e(ex["text"])}</td><td class="text">{e(ex["counterfactual"])}</td>'
                    f"<td>{e(ex['label'])}</td><td>{e(ex['counterfactual_label'])}</td></tr>"
                )
            parts.append("</tbody></table>")
    if data.get("notes"):
        parts += ["<h2>Notes</h2>", "<ul>", *(f"<li>{e(n)}</li>" for n in data["notes"]), "</ul>"]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
