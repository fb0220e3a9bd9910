"""Request and response bodies of the review routes (``/v1/review/...``), for the OpenAPI schema."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from hrlm.service.schemas.predict import STORABLE, ExplanationOut, Name


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


class FlaggedItemOut(BaseModel):
    """A flag a reviewer raised: who, when, and their note (``null`` when none, or removed by retention)."""

    item_id: int
    flagged_by: str
    at: dt.datetime
    note: str | None
    note_purged: bool = Field(description="Retention removed the note (retention_days, `hrlm purge`).")
    model_version: str
    suggestion: str
    reason: str = Field(description="Why the item was queued: low_confidence, uncertainty, random.")
    state: str = Field(description="The item's state now (flagged, or open again / done after an admin's action).")


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
    flagged_items: list[FlaggedItemOut] = Field(
        default_factory=list, description="The newest flagged items with who flagged them, when, and the note."
    )


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


class ItemExplanationOut(BaseModel):
    """Why the served model gives a review item's text a label: its words' attributions."""

    item_id: int
    model_version: str = Field(description="The model that explained (the served one; the item's may be older).")
    explanation: ExplanationOut


class WithdrawnOut(BaseModel):
    """An answer taken back."""

    action: str
    label: str | None
    at: dt.datetime


class UndoOut(BaseModel):
    """What undoing an answer did: the answer withdrawn, the item back with the reviewer."""

    item_id: int
    withdrawn: WithdrawnOut
    state: Literal["open", "done", "flagged"]


class ReopenIn(BaseModel):
    """Why an admin sends an item back to the queue (kept in the audit log)."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, StringConstraints(max_length=500), STORABLE] | None = None


class ReopenOut(BaseModel):
    """An item sent back to the queue: its earlier answers withdrawn."""

    item_id: int
    state: Literal["open"]
    withdrawn: int = Field(description="Answers withdrawn (their rows stay, counted nowhere).")
    previous_state: str


class FoundAnswerOut(BaseModel):
    reviewer: str
    label: str | None
    action: str


class FoundItemOut(BaseModel):
    """An item in a page of results (its text cut to a snippet)."""

    id: int
    created_at: dt.datetime
    state: str
    reason: str
    suggestion: str
    confidence: float | None
    model_version: str
    holdout: bool
    text: str = Field(description="The first 240 characters of the text (empty once retention removed it).")
    purged: bool
    answers: list[FoundAnswerOut] = Field(description="The answers that count (withdrawn ones left out).")


class BrowseOut(BaseModel):
    """A page of items, newest first; ask for the next with before=next_before."""

    items: list[FoundItemOut]
    total: int = Field(description="Items matching the filters, on every page.")
    next_before: int | None


class ItemAnswerOut(BaseModel):
    id: int
    reviewer: str
    at: dt.datetime
    action: str
    label: str | None
    previous_label: str | None
    note: str | None
    source: str | None = Field(description="Where the answer came from: null for hrlm's page, labelstudio, ...")
    withdrawn_at: dt.datetime | None
    withdrawn_by: str | None


class ItemDetailOut(BaseModel):
    """One item with every answer it got (withdrawn ones too, marked)."""

    id: int
    created_at: dt.datetime
    state: str
    reason: str
    suggestion: str
    confidence: float | None
    probabilities: dict[str, float]
    model_version: str
    holdout: bool
    reviews_needed: int
    text: str
    purged: bool
    answers: list[ItemAnswerOut]


class GuidelineIn(BaseModel):
    """A new version of a label's guideline."""

    model_config = ConfigDict(extra="forbid")

    description: Annotated[str, StringConstraints(min_length=1, max_length=4000), STORABLE] = Field(
        description="What the label means, and where its border with the others lies."
    )
    examples: list[Annotated[str, StringConstraints(max_length=500), STORABLE]] = Field(
        default_factory=list, max_length=10, description="Up to 10 example texts of the label."
    )


class GuidelineOut(BaseModel):
    label: str
    version: int
    description: str
    examples: list[str]
    created_at: dt.datetime
    created_by: str


class GuidelinesOut(BaseModel):
    """The newest guideline of each label that has one."""

    guidelines: dict[str, GuidelineOut]


class DisagreementAnswerOut(BaseModel):
    reviewer: str
    label: str | None
    note: str | None
    at: dt.datetime


class DisagreementOut(BaseModel):
    """A double-reviewed item whose reviewers gave different labels, not settled yet."""

    item_id: int
    text: str
    suggestion: str
    labels: list[str] = Field(description="The model's labels: the choices of an adjudication.")
    model_version: str
    answers: list[DisagreementAnswerOut]


class TriageOut(BaseModel):
    """What needs an admin: disagreements to settle, flagged items and skipped items with their notes."""

    disagreements: list[DisagreementOut]
    flagged: list[FlaggedItemOut]
    skipped: list[FlaggedItemOut] = Field(description="The newest skips (flagged_by: who skipped).")


class AdjudicateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: Annotated[str, StringConstraints(min_length=1, max_length=1000), STORABLE] = Field(
        description="The item's label from now on ('|'-joined for several)."
    )
    note: Annotated[str, StringConstraints(max_length=2000), STORABLE] | None = None


class AdjudicateOut(BaseModel):
    item_id: int
    label: str
    answers: list[str | None] = Field(description="The reviewers' labels it settles.")


class SimilarItemOut(BaseModel):
    id: int
    text: str = Field(description="The first 240 characters.")
    suggestion: str
    similarity: float = Field(description="Word-pair Jaccard similarity with the item (0 to 1).")


class SimilarOut(BaseModel):
    """Open items alike to an item, which one answer may settle together."""

    item_id: int
    threshold: float
    items: list[SimilarItemOut]


class BulkIn(BaseModel):
    """One label for several alike items (accept where it is an item's suggestion, correct elsewhere)."""

    model_config = ConfigDict(extra="forbid")

    item_ids: list[Annotated[int, Field(ge=1, le=2**63 - 1)]] = Field(min_length=1, max_length=200)
    label: Name | None = None
    labels: list[Name] | None = Field(default=None, max_length=100)

    def label_list(self) -> list[str]:
        return list(self.labels) if self.labels else [self.label] if self.label else []


class BulkRefusedOut(BaseModel):
    item_id: int
    why: str


class BulkOut(BaseModel):
    answered: int
    results: list[ReviewResultOut]
    refused: list[BulkRefusedOut]
