"""Request and response bodies of the API, as pydantic models (they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError

from hrlm.errors import DataError
from hrlm.text import check_storable, check_visible


def _storable(value: Any) -> Any:
    if not isinstance(value, str):
        return value  # not a string: pydantic's own check answers
    try:
        return check_storable("the string", value)
    except DataError as exc:
        raise PydanticCustomError("unstorable_character", str(exc)) from None


def _visible(value: str) -> str:
    try:
        return check_visible("the text", value)
    except DataError as exc:
        raise PydanticCustomError("no_visible_character", str(exc)) from None


STORABLE = BeforeValidator(_storable)
"""The check of every string of every request body: one a database can store (no NUL, no lone surrogate).

Else a 422 naming the field (:func:`hrlm.text.check_storable`). Every ``str`` of a request body
carries it after its length: ``Annotated[str, StringConstraints(max_length=200), STORABLE]``. It runs
before pydantic's string check (which would refuse a lone surrogate as "unable to parse raw data"),
and written after the constraints it keeps them on the string (a value too long still gets
``string_too_long``). tests/service/test_hostile.py checks that no body has a string without it.
"""
StoredStr = Annotated[str, STORABLE]
Name = Annotated[str, StringConstraints(max_length=200), STORABLE]
"""A label or a model version named in a request body."""

MAX_VERSION = 200  # characters of a model version name (the column's length; names are at most 189)
MAX_REPORT_NAME = 1024  # characters of a report file's path inside the report folder
MAX_JOB_ID = 64  # characters of a job id (a UUID has 36)
# the characters a version name is made of (hrlm.lifecycle.registry.version_name): a path with any other
# (NUL, a control character, a lone surrogate) is a 422 before it reaches the database, which may refuse it
VERSION_PATTERN = r"^[A-Za-z0-9._-]+$"
JOB_ID_PATTERN = r"^[A-Za-z0-9-]+$"


class WordOut(BaseModel):
    """A word and its attribution: positive is evidence for the label, negative against it."""

    text: str
    start: int = Field(description="Offset of the word's first character in the explanation's text.")
    end: int
    score: float


class ExplanationOut(BaseModel):
    """Word attributions of a text for one label, by integrated gradients (hrlm.inference.explain)."""

    text: str = Field(description="The text as the model read it (normalised); the offsets refer to it.")
    label: str
    task: str
    logit: float
    baseline_logit: float = Field(description="The logit with every word replaced by [PAD].")
    delta: float = Field(description="Sum of attributions - (logit - baseline_logit): the method's error.")
    words: list[WordOut]
    windows: int
    windows_attributed: int
    steps: int
    seconds: float
    notes: list[str] = Field(default_factory=list)


class PredictionOut(BaseModel):
    """One text's prediction. ``label`` is a list for multi-label tasks; ``tasks`` appears with several tasks."""

    label: str | list[str]
    score: float = Field(description="Probability of the predicted label (the highest one, multi-label).")
    probabilities: dict[str, float]
    tasks: dict[str, PredictionOut] | None = None
    explanation: ExplanationOut | None = Field(
        default=None, description='Why the model predicted the label (only with "explain": true).'
    )


class PredictResponse(BaseModel):
    """The answer to ``POST /v1/predict``.

    ``prediction`` answers ``{"text": ...}``; ``predictions`` answers ``{"texts": [...]}``, in order.
    """

    request_id: str = Field(description="The server's id of this request, unique; quote it in questions.")
    client_request_id: str | None = Field(
        default=None, description="The X-Request-ID the request carried (kept beside request_id, never instead)."
    )
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


def predict_request(
    max_texts: int, max_text_chars: int, *, allow_empty: bool = False, max_explain: int = 8
) -> type[BaseModel]:
    """The body of ``POST /v1/predict`` with this service's limits in its schema.

    A text without a visible character (empty, white space, controls) is refused unless ``allow_empty``.
    """
    # the length first (string_too_long names the limit), then what a database stores, then visibility
    visible = AfterValidator(lambda value: value if allow_empty else _visible(value))
    Text = Annotated[str, StringConstraints(max_length=max_text_chars), STORABLE, visible]

    class PredictRequest(BaseModel):
        """Either ``{"text": "..."}`` (answered with ``prediction``) or ``{"texts": [...]}`` (``predictions``)."""

        model_config = ConfigDict(
            extra="forbid",
            json_schema_extra={
                # exactly one of text and texts (the validator below says so in words), and explain
                "minProperties": 1,
                "maxProperties": 2,
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
        explain: bool = Field(
            default=False,
            description="Add each prediction's word attributions for its label (integrated gradients; slower: "
            f"at most {max_explain} texts).",
        )

        @model_validator(mode="after")
        def _one_of(self) -> PredictRequest:
            if (self.text is None) == (self.texts is None):
                raise ValueError('send exactly one of "text" (a string) or "texts" (a list of strings)')
            if self.explain and self.texts is not None and len(self.texts) > max_explain:
                raise ValueError(
                    f'"explain": true takes at most {max_explain} texts (explain_max_texts); send fewer at a time'
                )
            return self

    return PredictRequest
