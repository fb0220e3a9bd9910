"""Why the model said so: word attributions by integrated gradients (Captum), over every window of a text.

Integrated gradients (Sundararajan et al., 2017, "Axiomatic Attribution for Deep Networks") attribute
a logit to the input: the gradient of the logit, averaged along the straight path from a baseline
input to the real one, times the difference between the two. Here the path runs in the word-embedding
space (Captum's ``LayerIntegratedGradients`` on the encoder's input embeddings), from a baseline
whose words are all ``[PAD]`` (the special tokens, positions and segments kept) to the text. The
attributions of a window then sum, up to the approximation error reported as ``delta``, to the
window's logit minus the baseline's (Captum's ``delta`` is the difference).

A long text is read in overlapping windows and its logit is the mean of theirs (the model's
``aggregate``); each window's attributions are therefore divided by the number of windows and a token
seen by two windows gets both shares, so a document's attributions sum to its logit minus the
baseline's. WordPiece pieces are summed into words, with their character offsets in the normalised
text (:func:`hrlm.text.normalize`), which the explanation carries for display.

Positive scores are evidence for the label, negative ones against it. Computation is bounded: at
most ``max_windows`` windows are attributed (the rest are reported as skipped), with ``steps``
points along the path, in batches of ``batch_size``.

Example:
    >>> e = explain(predictor, ["my payslip is missing overtime"])[0]  # doctest: +SKIP
    >>> e.label, [(w.text, round(w.score, 2)) for w in e.top(2)]  # doctest: +SKIP
    ('payroll', [('payslip', 1.31), ('overtime', 0.87)])
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hrlm._extras import needs_extras
from hrlm.errors import ConfigError, LabelError
from hrlm.text import normalize, special_affixes, window_spans

if TYPE_CHECKING:
    from hrlm.inference.predictor import Predictor

DEFAULT_STEPS = 32
DEFAULT_MAX_WINDOWS = 16
HEAD_FRACTION = 0.25  # hrlm.text.head_tail's default


@dataclass
class Word:
    """A word of the text and its attribution (the sum over its WordPiece pieces)."""

    text: str
    start: int  # character offsets in the explanation's (normalised) text
    end: int
    score: float


@dataclass
class Explanation:
    """Word attributions of one text for one label."""

    text: str  # the normalised text the offsets refer to
    label: str  # the label explained
    task: str
    logit: float  # the document's logit of ``label``
    baseline_logit: float  # the same with every word replaced by [PAD]
    delta: float  # sum of attributions - (logit - baseline_logit): integrated gradients' error (Captum's)
    words: list[Word]
    windows: int  # windows of the text
    windows_attributed: int  # fewer than ``windows`` when max_windows cut the work short
    steps: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def top(self, k: int = 5, *, negative: bool = False) -> list[Word]:
        """The ``k`` words with the most evidence for the label (``negative``: against it)."""
        ranked = sorted(self.words, key=lambda w: w.score, reverse=not negative)
        return [w for w in ranked[:k] if (w.score < 0 if negative else w.score > 0)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def explain(
    predictor: Predictor,
    texts: Sequence[str],
    *,
    label: str | None = None,
    task: str | None = None,
    steps: int = DEFAULT_STEPS,
    max_windows: int = DEFAULT_MAX_WINDOWS,
    batch_size: int = 16,
) -> list[Explanation]:
    """Explain the model's logit of ``label`` (default: its predicted label) for each text.

    Args:
        predictor: a Predictor of a fine-tuned model (its torch model is used, whatever its backend).
        texts: the texts to explain.
        label: the label whose evidence to show (default: each text's predicted label).
        task: the task of a multi-task model (default: the first).
        steps: points along the integration path (more: smaller ``delta``, slower).
        max_windows: most windows of one text to attribute; a longer text's later windows are skipped.
        batch_size: path points per forward pass.

    Raises:
        ConfigError: the predictor has no torch model (an ensemble), bad ``steps`` or ``max_windows``.
        LabelError: ``label`` or ``task`` is not the model's.
    """
    with needs_extras("explanations (integrated gradients)"):
        from captum.attr import LayerIntegratedGradients
    model = getattr(predictor, "model", None)
    if model is None or not hasattr(model, "encoder"):
        raise ConfigError("explanations need one model's torch weights; explain each member of an ensemble instead.")
    if not 2 <= steps <= 512 or max_windows < 1:
        raise ConfigError(f"steps = {steps} must be 2-512 and max_windows = {max_windows} at least 1.")
    spec = _task(predictor, task)
    if label is not None and label not in spec.labels:
        raise LabelError(f"label {label!r} is not one of the model's: {', '.join(spec.labels)}.")
    targets = (
        [label] * len(texts)
        if label is not None
        else [_first(p.label) for p in _as_list(predictor.predict(list(texts)), spec.name)]
    )
    tokenizer = predictor.tokenizer
    prefix, suffix = special_affixes(tokenizer)
    body = predictor.max_length - len(prefix) - len(suffix)
    was_training = model.training
    model.eval()

    def forward(ids: torch.Tensor, mask: torch.Tensor, index: int) -> torch.Tensor:
        return model(ids, mask)[spec.name][:, index]

    run = _Run(
        lig=LayerIntegratedGradients(forward, model.encoder.get_input_embeddings()),
        forward=forward,
        predictor=predictor,
        spec=spec,
        prefix=prefix,
        suffix=suffix,
        body=body,
        steps=steps,
        max_windows=max_windows,
        batch_size=batch_size,
        device=next(model.parameters()).device,
    )
    try:
        return [_explain_one(run, text, target) for text, target in zip(texts, targets, strict=True)]
    finally:
        model.train(was_training)


@dataclass
class _Run:
    """What explaining each text of one call shares."""

    lig: Any  # captum.attr.LayerIntegratedGradients on the input embeddings
    forward: Any
    predictor: Any
    spec: Any
    prefix: list[int]
    suffix: list[int]
    body: int
    steps: int
    max_windows: int
    batch_size: int
    device: torch.device


def _explain_one(run: _Run, text: str, target: str) -> Explanation:
    t0 = time.perf_counter()
    predictor, tokenizer, prefix, suffix, body = (
        run.predictor,
        run.predictor.tokenizer,
        run.prefix,
        run.suffix,
        run.body,
    )
    clean = normalize(text)
    enc = tokenizer.backend_tokenizer.encode(clean, add_special_tokens=False)
    ids, offsets, word_ids = enc.ids, enc.offsets, enc.word_ids
    if predictor.truncate == "head":
        spans = [(0, min(len(ids), body))]
    elif predictor.truncate == "head+tail":  # as hrlm.text.head_tail cuts it: a quarter head, the rest tail
        head = int(body * HEAD_FRACTION)
        spans = [(0, len(ids))] if len(ids) <= body else [(0, head), (len(ids) - (body - head), len(ids))]
    else:
        spans = window_spans(len(ids), body, predictor.stride) if ids else [(0, 0)]
    index = run.spec.labels.index(target)
    n_windows = 1 if predictor.truncate != "none" else len(spans)
    pieces = [spans] if predictor.truncate == "head+tail" else [[s] for s in spans]
    token_scores = np.zeros(len(ids), dtype=np.float64)
    logit = baseline = approx = 0.0
    done = 0
    pad = int(tokenizer.pad_token_id or 0)
    for window in pieces[: run.max_windows]:
        positions = [p for a, b in window for p in range(a, b)]
        window_ids = [*prefix, *(ids[p] for p in positions), *suffix]
        x = torch.tensor([window_ids], dtype=torch.long, device=run.device)
        base = torch.tensor([[*prefix, *([pad] * len(positions)), *suffix]], dtype=torch.long, device=run.device)
        mask = torch.ones_like(x)
        attributions, delta = run.lig.attribute(
            x,
            baselines=base,
            additional_forward_args=(mask, index),
            n_steps=run.steps,
            internal_batch_size=run.batch_size,
            return_convergence_delta=True,
        )
        per_token = attributions.sum(dim=-1)[0].detach().cpu().double().numpy()
        with torch.no_grad():
            logit += float(run.forward(x, mask, index)[0]) / n_windows
            baseline += float(run.forward(base, mask, index)[0]) / n_windows
        approx += float(delta[0]) / n_windows
        body_scores = per_token[len(prefix) : len(prefix) + len(positions)] / n_windows
        np.add.at(token_scores, positions, body_scores)
        done += 1
    notes = []
    if done < len(pieces):
        notes.append(
            f"only the first {done} of {len(pieces)} windows were attributed (max_windows = {run.max_windows})"
        )
    if predictor.truncate != "none" and len(ids) > body:
        notes.append(f"the model reads this text as {predictor.truncate!r}: words outside it score 0")
    return Explanation(
        text=clean,
        label=target,
        task=run.spec.name,
        logit=round(logit, 6),
        baseline_logit=round(baseline, 6),
        delta=round(approx, 6),
        words=_words(clean, offsets, word_ids, token_scores),
        windows=len(pieces),
        windows_attributed=done,
        steps=run.steps,
        seconds=round(time.perf_counter() - t0, 3),
        notes=notes,
    )


def _words(
    text: str, offsets: Sequence[tuple[int, int]], word_ids: Sequence[int | None], scores: np.ndarray
) -> list[Word]:
    """WordPiece pieces summed into words, with the words' character offsets."""
    words: list[Word] = []
    last: int | None = None
    for (start, end), wid, score in zip(offsets, word_ids, scores, strict=True):
        if words and wid is not None and wid == last:
            w = words[-1]
            w.end, w.score = end, w.score + float(score)
            w.text = text[w.start : w.end]
        else:
            words.append(Word(text=text[start:end], start=start, end=end, score=float(score)))
        last = wid
    for w in words:
        w.score = round(w.score, 6)
    return words


def _task(predictor: Any, name: str | None) -> Any:
    tasks = predictor.tasks
    if name is None:
        return tasks[0]
    for spec in tasks:
        if spec.name == name:
            return spec
    raise LabelError(f"task {name!r} is not one of the model's: {', '.join(t.name for t in tasks)}.")


def _as_list(preds: Any, task: str) -> list[Any]:
    out = []
    for p in preds:
        tasks = getattr(p, "tasks", None)
        out.append(tasks[task] if tasks and task in tasks else p)
    return out


def _first(label: Any) -> str:
    """A multi-label prediction is explained for its first label (explain others with ``label=``)."""
    if isinstance(label, list):
        if not label:
            raise LabelError("the model predicted no label for this text; pass label= to explain one.")
        return str(label[0])
    return str(label)
