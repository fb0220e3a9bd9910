"""Few-shot learning with the SetFit method (Tunstall et al., 2022).

With a handful of labels per class, a classifier head on top of a fully fine-tuned encoder has too
little to learn from. SetFit first fine-tunes the encoder contrastively on sentence pairs made from
the few labelled texts (same label: similar, different labels: dissimilar), which multiplies the
training signal, then fits a linear head on the tuned encoder's mean-pooled vectors.

:func:`method_and_reason` resolves ``--method auto``: below ``TrainConfig.few_shot_below`` labelled
texts per class it cross-validates a head on frozen features, SetFit and fine-tuning on the training
split within ``auto_budget`` seconds (:mod:`hrlm.training.selection`) and says what it chose and why,
for the log and ``hrlm.json``. The pairs are bounded by the data: each pair of texts at most once, at most
``setfit_pairs`` pairs per text in all.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import nn

from hrlm._progress import ProgressBar
from hrlm.config import TrainConfig
from hrlm.data import Dataset
from hrlm.errors import ConfigError
from hrlm.inference import autocast, collate
from hrlm.inference.packing import transfer
from hrlm.modeling import HrlmModel, encoder_layers
from hrlm.training.attention import choose as choose_attention
from hrlm.training.dropout import choose as choose_dropout
from hrlm.training.loop import Optimization, run_steps
from hrlm.training.selection import HEAD, choose_by_cv
from hrlm.training.weights import choose as choose_weights

log = logging.getLogger("hrlm")


def choose_method(cfg: TrainConfig, train: Dataset) -> str:
    """The method to train with: the configured one, or what ``auto`` chooses (:func:`method_and_reason`)."""
    return method_and_reason(cfg, train)[0]


def method_and_reason(cfg: TrainConfig, train: Dataset) -> tuple[str, str]:
    """The method to train with and, in a sentence, why: what ``auto`` chose, or that it was set.

    ``auto`` decides by these rules, in order:

    - several label columns, multi-label data, a frozen encoder (``freeze_encoder``) or several
      ``workers``: ``finetune``, as SetFit needs one label per text and trains the encoder, and workers
      only fine-tune;
    - ``few_shot_below`` labelled texts per class or more: ``finetune``, without cross-validation (with
      that much data fine-tuning wins, and a cross-validation would cost several trainings);
    - fewer: :func:`hrlm.training.selection.choose_by_cv` cross-validates ``head`` (a linear head on
      frozen features, which fit trains with ``freeze_encoder``), ``setfit`` and ``finetune`` within
      ``auto_budget`` seconds and returns the best; with no class of two texts to hold out, ``head``,
      the cheapest.

    Returns:
        ``finetune``, ``setfit`` or, only from ``auto``, ``head``; and the reason.

    Raises:
        ConfigError: ``setfit`` was asked for data or settings it cannot train on.
    """
    if train.extra_tasks:
        if cfg.method == "setfit":
            raise ConfigError(
                "several label columns train by fine-tuning; drop --method setfit or train one model per column."
            )
        return "finetune", "several label columns train by fine-tuning"
    if cfg.method != "auto":
        if cfg.method == "setfit" and train.multi_label:
            raise ConfigError("method = 'setfit' needs single-label data; use --method finetune for multi-label.")
        if cfg.method == "setfit" and cfg.freeze_encoder:  # TrainConfig refuses it too; a cfg may be edited after
            raise ConfigError("method = 'setfit' trains the encoder, which --freeze-encoder keeps fixed; drop one.")
        return cfg.method, f"--method {cfg.method}"
    per_class = len(train) / max(1, len(train.label_names))
    counted = f"{per_class:.1f} labelled texts per class"
    if train.multi_label or not train.labels:
        return "finetune", "--method auto chose fine-tuning: SetFit needs one label per text"
    if per_class >= cfg.few_shot_below:
        return "finetune", (
            f"--method auto chose fine-tuning: {counted}, cross-validation of the methods only below "
            f"--few-shot-below {cfg.few_shot_below}"
        )
    if cfg.freeze_encoder:
        return "finetune", (
            f"--method auto chose fine-tuning of the head: {counted}, and --freeze-encoder keeps the encoder fixed"
        )
    if cfg.workers > 1:
        return "finetune", f"--method auto chose fine-tuning: {counted}, but --workers trains only that way"
    if max(train.label_counts().values()) < 2:
        return HEAD, (
            f"--method auto chose a head on frozen features, the cheapest method: {counted}, "
            "too few to hold any out for cross-validation"
        )
    choice = choose_by_cv(cfg, train)
    return choice.method, choice.reason


def contrastive_pairs(
    labels: Sequence[int], pairs_per_text: int, rng: random.Random, *, max_pairs: int | None = None
) -> list[tuple[int, int, float]]:
    """For each text, up to ``pairs_per_text`` positive and as many negative partners (SetFit's sampling).

    Each pair of texts is drawn at most once (``(i, j)`` and ``(j, i)`` are one pair), so what the data
    holds bounds the pairs: a class of two texts gives one positive pair, not ``2 * pairs_per_text``
    copies of it, and a repeated pair would cost a step and teach nothing new. ``max_pairs`` caps the
    total, keeping positives and negatives as balanced as the data allows.

    Returns ``(i, j, target)`` with target 1.0 for the same label and 0.0 for different labels.
    A class of one text has no positive partner; its texts get negatives only.

    Example:
        >>> pairs = contrastive_pairs([0, 0, 1], 1, random.Random(0))
        >>> sorted(t for _, _, t in pairs)
        [0.0, 0.0, 1.0]
    """
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        by_label[lab].append(i)
    others = {lab: [j for j, other in enumerate(labels) if other != lab] for lab in by_label}
    taken: set[tuple[int, int]] = set()
    found: dict[float, list[tuple[int, int, float]]] = {1.0: [], 0.0: []}
    for i, lab in enumerate(labels):
        for candidates, target in ((by_label[lab], 1.0), (others[lab], 0.0)):
            drawn = 0
            for j in _partners(candidates, pairs_per_text, rng):
                if drawn == pairs_per_text:
                    break
                key = (min(i, j), max(i, j))
                if j == i or key in taken:
                    continue
                taken.add(key)
                found[target].append((i, j, target))
                drawn += 1
    positives, negatives = found[1.0], found[0.0]
    if max_pairs is not None and len(positives) + len(negatives) > max_pairs:
        rng.shuffle(positives)
        rng.shuffle(negatives)
        keep_pos = min(len(positives), max(max_pairs // 2, max_pairs - len(negatives)))
        positives, negatives = positives[:keep_pos], negatives[: max_pairs - keep_pos]
    pairs = positives + negatives
    rng.shuffle(pairs)
    return pairs


def _partners(candidates: list[int], want: int, rng: random.Random) -> list[int]:
    """Candidates in a random order to walk until ``want`` new pairs are found; a bounded number of
    random draws when there are many (a large class), which keeps sampling linear in the texts."""
    budget = 4 * want + 4
    if len(candidates) <= budget:
        return rng.sample(candidates, len(candidates))
    return [rng.choice(candidates) for _ in range(budget)]


def train_contrastive(
    model: HrlmModel,
    windows: Sequence[Sequence[int]],
    labels: Sequence[int],
    cfg: TrainConfig,
    *,
    pad_id: int,
    device: torch.device,
    precision: str,
    show: bool = True,
    texts: int | None = None,
) -> dict[str, float]:
    """Fine-tune the encoder so that the cosine similarity of two texts' pooled vectors is 1 for the
    same label and 0 for different labels (mean squared error, as SetFit's CosineSimilarityLoss).

    The optimisation is :func:`hrlm.training.loop.run_steps`'s, at ``setfit_lr``: biases and LayerNorm
    weights are not decayed, as in every other trainer. The pass is one over at most
    ``setfit_pairs * texts`` distinct pairs (``texts``: the labelled texts, default one per window), so
    its cost grows with the data, not with how long the texts are; a progress bar shows its steps.

    Returns:
        ``pairs``, ``steps``, ``seconds`` (in training steps) and the mean training ``loss`` of the pass.

    Raises:
        ConfigError: fewer than two classes, or no trainable encoder weight (a frozen encoder).
    """
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    if not any(p.requires_grad for p in encoder_layers(model.encoder).parameters()):
        raise ConfigError(
            "SetFit trains the encoder, but --freeze-encoder or --freeze-layers freezes all of its layers; "
            "freeze fewer, or train with --method finetune."
        )
    rng = random.Random(cfg.seed)
    n_texts = len(windows) if texts is None else texts
    pairs = contrastive_pairs(labels, cfg.setfit_pairs, rng, max_pairs=cfg.setfit_pairs * max(n_texts, 1))
    if not pairs:
        raise ConfigError("few-shot training needs at least two classes with labelled texts.")
    size = max(2, cfg.batch_size)  # pairs per step, as SetFit's batch size
    batches = [pairs[i : i + size] for i in range(0, len(pairs), size)]  # one pass over the pairs
    log.info("SetFit: %d contrastive pairs of %d texts, %d steps of %d pairs", len(pairs), n_texts, len(batches), size)

    def loss_of_batch(batch: list[tuple[int, int, float]]) -> tuple[torch.Tensor, int]:
        left, mask_l = collate([windows[i] for i, _, _ in batch], pad_id)
        right, mask_r = collate([windows[j] for _, j, _ in batch], pad_id)
        target = torch.tensor([t for _, _, t in batch])
        # one copy that does not make the host wait for a GPU (see transfer)
        left, mask_l, right, mask_r, target = transfer([left, mask_l, right, mask_r, target], device)
        with autocast(device, precision):
            a = model.pool(left, mask_l)
            b = model.pool(right, mask_r)
        cos = nn.functional.cosine_similarity(a.float(), b.float())
        return nn.functional.mse_loss(cos, target), len(batch)

    # Only the encoder learns here; the head is fitted afterwards on its pooled vectors.
    opt = Optimization.from_config(cfg, steps=len(batches), lr=cfg.setfit_lr)
    bar = ProgressBar(opt.steps, "contrastive pairs", unit="steps", fields={"loss": "-"}, enabled=show)
    # Ctrl-C stops this pass cleanly: the head is then fitted on what the encoder has learned so far.
    longest = max((len(w) for w in windows), default=16)
    attention = choose_attention(model, device, precision, longest, size)
    dropout = choose_dropout(model, device, precision, longest)
    weights = choose_weights(model, device, precision, longest)
    done = run_steps(
        model, params, iter(batches), loss_of_batch, opt, bar=bar, attention=attention, dropout=dropout, weights=weights
    )
    model.eval()
    return {"pairs": len(pairs), "steps": done.steps, "seconds": done.seconds, "loss": done.train_loss}
