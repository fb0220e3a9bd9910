"""Request and response bodies of the API, as pydantic models (they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator


class PredictionOut(BaseModel):
    """One text's prediction. ``label`` is a list for multi-label tasks; ``tasks`` appears with several tasks."""

    label: str | list[str]
    score: float = Field(description="Probability of the predicted label (the highest one, multi-label).")
    probabilities: dict[str, float]
    tasks: dict[str, PredictionOut] | None = None


class PredictResponse(BaseModel):
    """The answer to ``POST /v1/predict``.

    ``prediction`` answers ``{"text": ...}``; ``predictions`` answers ``{"texts": [...]}``, in order.
    """

    request_id: str
    model_version: str
    prediction: PredictionOut | None = None
    predictions: list[PredictionOut] | None = None
    stored: bool = Field(description="Whether the prediction records were written to the database.")
    latency_ms: float = Field(description="Time from queueing to the model's answer, in milliseconds.")


class ErrorOut(BaseModel):
    """Every error: what went wrong and what to do, the error's kind, and the request id to quote."""

    detail: str
    error: str
    request_id: str | None = None
    errors: list[dict[str, Any]] | None = None


class TaskOut(BaseModel):
    name: str
    labels: list[str]
    multi_label: bool


class ModelOut(BaseModel):
    """A model version: its tasks and labels, headline metrics, and whether it is the one answering."""

    version: str
    stage: str | None
    serving: bool
    tasks: list[TaskOut]
    metrics: dict[str, float]
    base_encoder: str | None
    max_length: int
    hrlm_version: str


class ModelsOut(BaseModel):
    serving: str
    models: list[ModelOut]


class Health(BaseModel):
    status: str
    model_version: str | None = None
    queue_depth: int | None = None


def predict_request(max_texts: int, max_text_chars: int) -> type[BaseModel]:
    """The body of ``POST /v1/predict`` with this service's limits in its schema."""
    Text = Annotated[str, StringConstraints(max_length=max_text_chars)]

    class PredictRequest(BaseModel):
        """Either ``{"text": "..."}`` (answered with ``prediction``) or ``{"texts": [...]}`` (``predictions``)."""

        model_config = ConfigDict(
            extra="forbid",
            json_schema_extra={
                # exactly one of the two (the validator below says so in words)
                "minProperties": 1,
                "maxProperties": 1,
                "examples": [
                    {"text": "My payslip is missing last week's overtime"},
                    {"texts": ["Can I carry over vacation days?", "VPN login fails"]},
                ],
            },
        )

        text: Text | None = Field(default=None, description=f"One text, at most {max_text_chars} characters.")
        texts: list[Text] | None = Field(
            None, min_length=1, max_length=max_texts, description=f"1 to {max_texts} texts."
        )

        @model_validator(mode="after")
        def _one_of(self) -> PredictRequest:
            if (self.text is None) == (self.texts is None):
                raise ValueError('send exactly one of "text" (a string) or "texts" (a list of strings)')
            return self

    return PredictRequest
