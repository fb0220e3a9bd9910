"""Bias audits: selection rates and impact ratios per group and intersection, and a counterfactual probe.

Modules: ``groups`` (the arithmetic on Fairlearn's MetricFrame: selection and scoring rates,
impact ratios, the four-fifths flag, small and unknown categories, per-group accuracy, F1 and
calibration), ``counterfactual`` (the project's gendered word list, :func:`swap_gender`,
:func:`counterfactual_probe`), ``predictions`` (a model's outputs as the audit reads them),
``audit`` (:func:`run_audit`, :class:`AuditResult`) and ``report`` (``audit.json`` and
``audit.html``). Fairlearn comes with the ``audit`` extra: ``pip install 'hrlm[audit]'``.

This package sits beside training and review: it uses inference and the core, nothing above.
"""

from __future__ import annotations

from hrlm.fairness.audit import AuditResult, load_audit_frame, run_audit
from hrlm.fairness.counterfactual import NAME_PAIRS, WORD_PAIRS, counterfactual_probe, swap_gender
from hrlm.fairness.groups import FOUR_FIFTHS, SMALL_SHARE, Labelled, audit_groups, groupings_of, unknown_mask
from hrlm.fairness.predictions import ModelOutputs, model_outputs, positive_label
from hrlm.fairness.report import AUDIT_HTML, AUDIT_JSON, audit_html, write_audit_report

AUDIT_FAILED_EXIT = 3  # the exit status of `hrlm audit` when the audit fails its thresholds

__all__ = [
    "AUDIT_FAILED_EXIT",
    "AUDIT_HTML",
    "AUDIT_JSON",
    "FOUR_FIFTHS",
    "NAME_PAIRS",
    "SMALL_SHARE",
    "WORD_PAIRS",
    "AuditResult",
    "Labelled",
    "ModelOutputs",
    "audit_groups",
    "audit_html",
    "counterfactual_probe",
    "groupings_of",
    "load_audit_frame",
    "model_outputs",
    "positive_label",
    "run_audit",
    "swap_gender",
    "unknown_mask",
    "write_audit_report",
]
