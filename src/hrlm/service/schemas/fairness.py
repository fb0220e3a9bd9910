"""Request and response bodies of the bias-audit route (``POST /v1/audit``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hrlm.service.schemas.predict import STORABLE, Name

Stored = Annotated[str, STORABLE]

MAX_AUDIT_ROWS = 100_000  # rows of one uploaded table


class AuditIn(BaseModel):
    """An audit of the served model (or ``version``) on uploaded rows, or on reviewed items joined with groups.

    The data comes as ``rows`` (JSON objects) or as ``table`` (the text of a CSV or JSONL file, as the
    admin page reads it in the browser). With ``source = "upload"`` the rows hold the texts and the
    group columns; with ``source = "review"`` they hold ``item_id`` and the group columns, and the
    texts and true labels come from the reviewed items (review items carry no group attributes).
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "group_cols": ["sex"],
                    "positive": "interview",
                    "rows": [{"text": "Ten years of payroll work", "sex": "F"}],
                },
                {"source": "review", "group_cols": ["sex"], "positive": "payroll", "table": "item_id,sex\n17,F\n"},
            ]
        },
    )

    group_cols: list[Name] = Field(min_length=1, max_length=10, description="The group columns of the rows.")
    positive: Name = Field(description="The label that counts as selected.")
    source: Literal["upload", "review"] = Field(
        default="upload", description="upload: the rows hold texts; review: the rows map item_id to groups."
    )
    rows: list[dict[Stored, Any]] | None = Field(
        default=None, max_length=MAX_AUDIT_ROWS, description="The rows as JSON."
    )
    table: Stored | None = Field(default=None, description="The rows as the text of a CSV or JSONL file.")
    format: Literal["csv", "jsonl"] = Field(default="csv", description="The format of table.")
    version: Name | None = Field(default=None, description="A registry version to audit (default: the served model).")
    text_col: Name = Field(default="text", description="The text column of uploaded rows.")
    label_col: Name | None = Field(default=None, description="A column of true labels (per-group accuracy, F1, ECE).")
    min_impact_ratio: float = Field(default=0.8, gt=0, le=1, description="Impact ratios under it fail the audit.")
    max_flip_rate: float | None = Field(default=None, ge=0, le=1, description="Most flips the gender swap may cause.")
    counterfactual: bool = Field(default=True, description="Run the counterfactual gender-swap probe.")
    data_source: Stored | None = Field(default=None, max_length=500, description="Where the data comes from.")
    explanation: Stored | None = Field(default=None, max_length=2000, description="How the data was gathered.")

    @model_validator(mode="after")
    def _one_table(self) -> AuditIn:
        if (self.rows is None) == (self.table is None):
            raise ValueError("send the data as rows (JSON objects) or as table (a CSV or JSONL file's text), not both")
        return self


class AuditOut(BaseModel):
    """The audit as ``audit.json`` holds it; every field of :meth:`hrlm.fairness.AuditResult.to_dict`."""

    model_config = ConfigDict(extra="allow")

    date: str
    passed: bool
    reasons: list[str]
    min_impact_ratio: float | None
    threshold: float
    groupings: list[dict[str, Any]]
