"""Request and response bodies of the review routes (``/v1/review/...``), for the OpenAPI schema."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from hrlm.service.schemas.predict import STORABLE, Name


class ReviewerOut(BaseModel):
    name: str
    role: str


class ReviewItemOut(BaseModel):
    """A text to review: the model's suggestion and every label's probability."""

    id: int
    text: str = Field(description="The text as the service stored it (PII redacted unless store_text = raw).")
    suggestion: str | list[str] = Field(description="The model's label; a list for a multi-label model.")
    labels: list[str] = Field(description="Every label the reviewer may choose, in the model's order.")
    multi_label: bool
    probabilities: dict[str, float]
    confidence: float
    model_version: str
    reason: str = Field(description="Why it is in the queue: low_confidence, uncertainty or random.")
    score: float = Field(description="Its priority (higher first).")
    reviews_needed: int
    reviews_done: int
    created_at: dt.datetime
    leased_until: dt.datetime | None = Field(description="The item stays this reviewer's until then.")


class ReviewNextOut(BaseModel):
    """The next item for the caller (``null`` when the queue has none for them) and the open items left."""

    reviewer: ReviewerOut
    item: ReviewItemOut | None
    open_items: int


class ReviewAnswerIn(BaseModel):
    """A reviewer's answer: ``accept`` the suggestion, ``correct`` it, ``skip`` or ``flag`` the item."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"action": "accept"},
                {"action": "correct", "label": "leave"},
                {"action": "correct", "labels": ["payroll", "leave"]},
                {"action": "flag", "note": "the text still shows a phone number"},
            ]
        },
    )

    action: Literal["accept", "correct", "skip", "flag"]
    label: Name | None = Field(default=None, description="The right label (action correct).")
    labels: list[Name] | None = Field(
        default=None, max_length=200, description="The right labels of a multi-label model (action correct)."
    )
    note: Annotated[str, StringConstraints(max_length=2000), STORABLE] | None = Field(
        default=None, description="Why, mostly for flag."
    )

    @model_validator(mode="after")
    def _one_of(self) -> ReviewAnswerIn:
        if self.label is not None and self.labels is not None:
            raise ValueError('send "label" (one) or "labels" (several), not both')
        return self

    def label_list(self) -> list[str] | None:
        return [self.label] if self.label is not None else self.labels


class ReviewResultOut(BaseModel):
    """What an answer did to its item."""

    item_id: int
    action: str
    label: str | None = Field(description="The label this answer gave ('|'-joined for several).")
    previous_label: str | None = Field(description="The item's label before: the suggestion or a reviewer's.")
    state: Literal["open", "done", "flagged"]
    reviews_done: int
    reviews_needed: int


class ReasonCounts(BaseModel):
    open: int = 0
    done: int = 0
    flagged: int = 0


class ReviewerCounts(BaseModel):
    reviewer: str
    accept: int
    correct: int
    skip: int
    flag: int
    total: int


class FillState(BaseModel):
    last_prediction_id: int
    scanned: int
    queued: int
    skipped_no_text: int
    skipped_duplicate: int
    updated_at: dt.datetime


class ReviewStatsOut(BaseModel):
    """The queue: items by state and reason, answers per reviewer, and what the filler skipped."""

    open: int
    leased: int
    done: int
    flagged: int
    holdout_done: int = Field(description="Done items kept out of retraining, to measure models on.")
    disagreements: int
    by_reason: dict[str, ReasonCounts]
    reviewers: list[ReviewerCounts]
    fill: FillState | None
    notes: list[str]


class PairAgreement(BaseModel):
    reviewers: list[str]
    items: int
    agreement: float | None
    kappa: float | None


class AgreementOut(BaseModel):
    """Cohen's kappa over items answered by two reviewers (``null`` where it is undefined)."""

    items: int
    agreement: float | None
    kappa: float | None
    pairs: list[PairAgreement]


class FillOut(BaseModel):
    """What one fill of the queue did."""

    scanned: int
    queued: int
    by_reason: dict[str, int]
    skipped_no_text: int
    skipped_duplicate: int
    last_prediction_id: int
