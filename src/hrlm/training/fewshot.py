"""Few-shot learning with the SetFit method (Tunstall et al., 2022).

With a handful of labels per class, a classifier head on top of a fully fine-tuned encoder has too
little to learn from. SetFit first fine-tunes the encoder contrastively on sentence pairs made from
the few labelled texts (same label: similar, different labels: dissimilar), which multiplies the
training signal, then fits a linear head on the tuned encoder's mean-pooled vectors.

:func:`choose_method` picks SetFit automatically when the training split has fewer labelled texts
per class than ``TrainConfig.few_shot_below``.
"""

from __future__ import annotations

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
from hrlm.modeling import HrlmModel
from hrlm.training.loop import Optimization, run_steps


def choose_method(cfg: TrainConfig, train: Dataset) -> str:
    """``finetune`` or ``setfit``: the configured method, or for ``auto`` SetFit below the threshold.

    Multi-label and multi-task data always use fine-tuning: SetFit's pairs need one label per text.
    """
    if train.extra_tasks:
        if cfg.method == "setfit":
            raise ConfigError(
                "several label columns train by fine-tuning; drop --method setfit or train one model per column."
            )
        return "finetune"
    if cfg.method != "auto":
        if cfg.method == "setfit" and train.multi_label:
            raise ConfigError("method = 'setfit' needs single-label data; use --method finetune for multi-label.")
        return cfg.method
    if train.multi_label or not train.labels:
        return "finetune"
    per_class = len(train) / max(1, len(train.label_names))
    return "setfit" if per_class < cfg.few_shot_below else "finetune"


def contrastive_pairs(labels: Sequence[int], pairs_per_text: int, rng: random.Random) -> list[tuple[int, int, float]]:
    """For each text, ``pairs_per_text`` positive and as many negative partners (SetFit's sampling).

    Returns ``(i, j, target)`` with target 1.0 for the same label and 0.0 for different labels.
    A class of one text has no positive partner; its texts get negatives only.

    Example:
        >>> pairs = contrastive_pairs([0, 0, 1], 1, random.Random(0))
        >>> sorted(t for _, _, t in pairs)
        [0.0, 0.0, 0.0, 1.0, 1.0]
    """
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        by_label[lab].append(i)
    pairs: list[tuple[int, int, float]] = []
    for i, lab in enumerate(labels):
        same = [j for j in by_label[lab] if j != i]
        other = [j for j in range(len(labels)) if labels[j] != lab]
        for _ in range(pairs_per_text):
            if same:
                pairs.append((i, rng.choice(same), 1.0))
            if other:
                pairs.append((i, rng.choice(other), 0.0))
    rng.shuffle(pairs)
    return pairs


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
) -> dict[str, float]:
    """Fine-tune the encoder so that the cosine similarity of two texts' pooled vectors is 1 for the
    same label and 0 for different labels (mean squared error, as SetFit's CosineSimilarityLoss).

    The optimisation is :func:`hrlm.training.loop.run_steps`'s, at ``setfit_lr``: biases and LayerNorm
    weights are not decayed, as in every other trainer.

    Returns:
        ``pairs``, ``steps``, ``seconds`` (in training steps) and the mean training ``loss`` of the pass.
    """
    rng = random.Random(cfg.seed)
    pairs = contrastive_pairs(labels, cfg.setfit_pairs, rng)
    if not pairs:
        raise ConfigError("few-shot training needs at least two classes with labelled texts.")
    size = max(2, cfg.batch_size)  # pairs per step, as SetFit's batch size
    batches = [pairs[i : i + size] for i in range(0, len(pairs), size)]  # one pass over the pairs

    def loss_of_batch(batch: list[tuple[int, int, float]]) -> tuple[torch.Tensor, int]:
        left, mask_l = collate([windows[i] for i, _, _ in batch], pad_id)
        right, mask_r = collate([windows[j] for _, j, _ in batch], pad_id)
        target = torch.tensor([t for _, _, t in batch], device=device)
        with autocast(device, precision):
            a = model.pool(left.to(device), mask_l.to(device))
            b = model.pool(right.to(device), mask_r.to(device))
        cos = nn.functional.cosine_similarity(a.float(), b.float())
        return nn.functional.mse_loss(cos, target), len(batch)

    # Only the encoder learns here; the head is fitted afterwards on its pooled vectors.
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    opt = Optimization.from_config(cfg, steps=len(batches), lr=cfg.setfit_lr)
    bar = ProgressBar(opt.steps, "contrastive pairs", unit="steps", fields={"loss": "-"}, enabled=show)
    # Ctrl-C stops this pass cleanly: the head is then fitted on what the encoder has learned so far.
    done = run_steps(model, params, iter(batches), loss_of_batch, opt, bar=bar)
    model.eval()
    return {"pairs": len(pairs), "steps": done.steps, "seconds": done.seconds, "loss": done.train_loss}
