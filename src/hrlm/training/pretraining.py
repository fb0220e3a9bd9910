"""Domain-adaptive pretraining: masked-LM and next-sentence prediction on unlabelled text.

:func:`pretrain` continues the pretraining of a base encoder on a corpus of in-domain text and
writes a folder that ``hrlm train --base`` accepts. Masks are drawn anew for every batch (dynamic
masking, as in RoBERTa), over single tokens or whole words.

A sentence encoder such as all-MiniLM-L6-v2 ships without a masked-LM head. One is created with its
output matrix tied to the word embeddings and first trained alone, with the encoder frozen
(``head_steps``): the held-out loss after that warm-up is the fair "before" against which the
adapted encoder is measured. Without the warm-up, "before" would be the loss of a random head and
any adaptation would look like a triumph.

With ``workers > 1`` the warm-up and the adaptation run data-parallel on Ray Train
(:mod:`hrlm.training.distributed`): ``batch_size`` stays the global batch, each worker masks and
trains on its share, the held-out loss is measured on rank 0, and this process writes the folder.
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from hrlm._fs import atomic_dir, write_json
from hrlm._progress import ProgressBar
from hrlm.config import PretrainConfig
from hrlm.encoders import load_tokenizer, resolve_base
from hrlm.errors import ConfigError, DataError
from hrlm.inference import autocast, default_threads, resolve_device, resolve_precision
from hrlm.inference.packing import transfer
from hrlm.modeling import attention_dropout_for, quiet_transformers, set_dropout
from hrlm.text import normalize
from hrlm.training.attention import choose as choose_attention
from hrlm.training.batching import batches_forever
from hrlm.training.distributed import Replicas, check_distributable, run_on_workers, shard
from hrlm.training.dropout import choose as choose_dropout
from hrlm.training.loop import Optimization, run_steps, seed_everything
from hrlm.training.mlm_data import (
    IGNORE,
    Batch,
    Example,
    build_mlm_examples,
    build_nsp_examples,
    collate_examples,
    read_corpus,
)
from hrlm.training.weights import choose as choose_weights

log = logging.getLogger("hrlm")

REPORT_FILE = "pretrain.json"


@dataclass
class PretrainResult:
    """What a pretraining run produced."""

    out: Path | None
    before: dict[str, float]
    after: dict[str, float]
    history: list[dict[str, Any]]
    train_seconds: float
    samples_per_s: float
    head_was_new: bool
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)
    placements: list[dict[str, Any]] = field(default_factory=list)  # with workers: rank, node, IP, pid


def load_pretraining_model(base_dir: Path, *, nsp: bool, device: Any = "cpu") -> tuple[Any, bool]:
    """The base encoder with a masked-LM head (and an NSP head for BERT), and whether the MLM head is new.

    The head's output matrix is tied to the word embeddings, as in BERT. On a CPU, attention
    probabilities are not dropped out (:func:`hrlm.modeling.attention_dropout_for`).
    """
    from transformers import AutoConfig, AutoModelForMaskedLM, BertForPreTraining

    quiet_transformers()
    config = AutoConfig.from_pretrained(str(base_dir), local_files_only=True)
    set_dropout(config, None, attention_dropout_for(None, device))
    config.tie_word_embeddings = True
    if config.model_type == "bert":
        model, info = cast(
            tuple[Any, dict[str, Any]],
            BertForPreTraining.from_pretrained(
                str(base_dir), config=config, local_files_only=True, output_loading_info=True, dtype=torch.float32
            ),
        )
    elif nsp:
        raise ConfigError(f"next-sentence prediction needs a BERT encoder, not {config.model_type!r}; drop --nsp.")
    else:
        model, info = AutoModelForMaskedLM.from_pretrained(
            str(base_dir), config=config, local_files_only=True, output_loading_info=True, dtype=torch.float32
        )
    model.tie_weights()
    _mlm_head(model)
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    if out_emb is None or out_emb.weight.data_ptr() != in_emb.weight.data_ptr():
        raise ConfigError(f"cannot tie the masked-LM head of the {config.model_type!r} encoder to its embeddings.")
    missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
    head_new = any(not k.startswith(model.base_model_prefix + ".") for k in missing)
    return model, head_new


def _mlm_head(model: Any) -> nn.Module:
    """The module that turns hidden states into vocabulary logits."""
    head = getattr(getattr(model, "cls", None), "predictions", None) or getattr(model, "lm_head", None)
    if head is None:
        raise ConfigError(f"{type(model).__name__} has no masked-LM head hrlm knows; use a BERT or RoBERTa encoder.")
    return head


def _losses(
    model: Any, batch: Batch, device: torch.device, precision: str
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Masked-LM loss (mean over masked tokens), NSP loss and NSP logits; vocabulary logits only where masked.

    The masked positions are found on the CPU and travel with the batch in one copy (see
    :func:`hrlm.inference.packing.transfer`): selecting them on a GPU with a boolean mask would make
    the host wait for it every batch.
    """
    flat = batch.labels.reshape(-1)
    chosen = (flat != IGNORE).nonzero().squeeze(1)  # row-major, as a boolean mask selects
    extra = [] if batch.nsp is None else [batch.nsp]
    ids, mask, types, chosen, targets, *nsp = transfer(
        [batch.ids, batch.mask, batch.types, chosen, flat[chosen], *extra], device
    )
    with autocast(device, precision):
        out = model.base_model(input_ids=ids, attention_mask=mask, token_type_ids=types)
        hidden = out.last_hidden_state
        logits = _mlm_head(model)(hidden.reshape(-1, hidden.shape[-1]).index_select(0, chosen))
        nsp_logits = model.cls.seq_relationship(out.pooler_output) if nsp else None
    mlm = nn.functional.cross_entropy(logits.float(), targets)
    if nsp_logits is None:
        return mlm, None, None
    nsp_logits = nsp_logits.float()
    return mlm, nn.functional.cross_entropy(nsp_logits, nsp[0]), nsp_logits


class _Data:
    """Examples with a batch stream for training and fixed masks for held-out evaluation."""

    def __init__(self, examples: list[Example], cfg: PretrainConfig, tokenizer: Any, vocab_size: int) -> None:
        self.examples, self.cfg = examples, cfg
        self.pad_id = int(tokenizer.pad_token_id or 0)
        if tokenizer.mask_token_id is None:
            raise ConfigError("the tokenizer has no mask token; masked-LM pretraining needs one.")
        self.mask_id = int(tokenizer.mask_token_id)
        self.vocab_size = vocab_size

    def collate(self, idx: Sequence[int], g: torch.Generator) -> Batch:
        return collate_examples(
            [self.examples[i] for i in idx],
            self.cfg,
            pad_id=self.pad_id,
            mask_id=self.mask_id,
            vocab_size=self.vocab_size,
            g=g,
        )

    def stream(self, seed: int, replicas: Replicas | None = None) -> Iterator[tuple[Batch, float]]:
        """Batches forever, each with the weight of its loss: length-grouped, reshuffled, re-masked every epoch.

        With ``replicas``, this worker's share of every global batch (:func:`shard`).
        """
        g = torch.Generator().manual_seed(seed + (replicas.rank if replicas is not None else 0))
        for idx in batches_forever([len(e.ids) for e in self.examples], self.cfg.batch_size, seed):
            mine, weight = shard(idx, replicas)
            yield self.collate(mine, g), weight

    def fixed_batches(self, seed: int) -> list[Batch]:
        """The same masks every time, so that losses before and after training compare."""
        g = torch.Generator().manual_seed(seed)
        order = sorted(range(len(self.examples)), key=lambda i: len(self.examples[i].ids))
        size = self.cfg.batch_size * 2
        return [self.collate(order[i : i + size], g) for i in range(0, len(order), size)]


@torch.no_grad()
def heldout_loss(model: Any, batches: Sequence[Batch], device: torch.device, precision: str) -> dict[str, float]:
    """Masked-LM loss per masked token and its perplexity (plus NSP loss and accuracy) on held-out batches."""
    was_training = model.training
    model.eval()
    total, count, nsp_total, nsp_right, nsp_n = 0.0, 0, 0.0, 0, 0
    for b in batches:
        n = int((b.labels != IGNORE).sum())
        mlm, nsp, nsp_logits = _losses(model, b, device, precision)
        total += float(mlm) * n
        count += n
        if nsp is not None and nsp_logits is not None and b.nsp is not None:
            pred = nsp_logits.argmax(-1).cpu()
            nsp_total += float(nsp) * len(b.nsp)
            nsp_right += int((pred == b.nsp).sum())
            nsp_n += len(b.nsp)
    model.train(was_training)
    loss = total / max(count, 1)
    result = {"mlm_loss": round(loss, 5), "perplexity": round(math.exp(min(loss, 50.0)), 3), "masked_tokens": count}
    if nsp_n:
        result["nsp_loss"] = round(nsp_total / nsp_n, 5)
        result["nsp_accuracy"] = round(nsp_right / nsp_n, 4)
    return result


def pretrain(
    corpus: str | Path | Sequence[str],
    out: str | Path | None,
    cfg: PretrainConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> PretrainResult:
    """Continue pretraining the base encoder on unlabelled text and write a ``--base`` folder.

    Args:
        corpus: a corpus path (see :func:`read_corpus`) or the documents themselves.
        out: folder to write (weights with the MLM head, tokenizer, ``pretrain.json``); ``None``
            to measure without saving.
        cfg: the run's settings.

    Returns:
        Held-out masked-LM loss and perplexity before (after the head warm-up) and after.

    Example:
        >>> r = pretrain("comments.txt", "runs/hr-encoder", PretrainConfig(epochs=2))  # doctest: +SKIP
        >>> r.after["perplexity"] < r.before["perplexity"]  # doctest: +SKIP
        True
    """
    cfg = cfg or PretrainConfig()
    if out is not None and Path(out).exists() and not overwrite:
        raise ConfigError(f"{out} already exists; choose another --out or pass --overwrite.")
    check_distributable(cfg)
    docs = read_corpus(corpus, cfg.text_col) if isinstance(corpus, str | Path) else [normalize(d) for d in corpus]
    docs = [d for d in docs if d]
    if len(docs) < 2:
        raise DataError("the corpus needs at least 2 non-empty documents (one is held out to measure).")
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or default_threads())

    base_dir = resolve_base(cfg.base)
    tokenizer = load_tokenizer(base_dir)
    model, head_new = load_pretraining_model(base_dir, nsp=cfg.nsp, device=device)
    limit = int(getattr(model.config, "max_position_embeddings", 512))
    if cfg.max_length > limit:
        raise ConfigError(f"max_length = {cfg.max_length} exceeds the encoder's limit of {limit} positions.")

    order = list(range(len(docs)))
    random.Random(cfg.seed).shuffle(order)
    n_val = min(max(1, round(cfg.val_size * len(docs))), len(docs) - 1)
    val_docs = [docs[i] for i in order[:n_val]]
    train_docs = [docs[i] for i in order[n_val:]]

    def build(part: list[str], seed: int) -> list[Example]:
        if cfg.nsp:
            return build_nsp_examples(tokenizer, part, cfg.max_length, random.Random(seed))
        return build_mlm_examples(tokenizer, part, cfg.max_length)

    train_ex, val_ex = build(train_docs, cfg.seed), build(val_docs, cfg.seed + 1)
    if not train_ex or not val_ex:
        raise DataError(
            "the corpus gives no training or held-out examples"
            + (" (next-sentence prediction needs documents of two sentences or more)" if cfg.nsp else "")
            + "; add more text."
        )
    notes = [f"{len(train_docs)} documents -> {len(train_ex)} examples; {len(val_docs)} held out -> {len(val_ex)}"]
    if not head_new:
        notes.append("the base encoder has a trained masked-LM head; no warm-up needed")
    placements: list[dict[str, Any]] = []
    if cfg.workers > 1:
        initial = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        job = functools.partial(_pretrain_replica, cfg, train_ex, val_ex, initial, head_new, precision, progress)
        outcome = run_on_workers(job, cfg, what="pretraining")
        run, placements = outcome.result, outcome.placements
        model.load_state_dict(run.pop("state"))
        report_device = str(placements[0]["device"]).split(":")[0]
    else:
        model.to(device)
        run = _adapt(model, tokenizer, cfg, train_ex, val_ex, head_new, device, precision, progress, None)
        report_device = device.type
    model.eval()
    report = {
        "before": run["before"],
        "after": run["after"],
        "head_was_new": head_new,
        "head_warmup_steps": run["warm_steps"],
        "history": run["history"],
        "train_seconds": round(run["seconds"], 2),
        "samples_per_s": round(run["samples"] / max(run["seconds"], 1e-9), 2),
        "documents": {"train": len(train_docs), "heldout": len(val_docs)},
        "examples": {"train": len(train_ex), "heldout": len(val_ex)},
        "interrupted": run["interrupted"],
        "device": report_device,
        "precision": precision,
        "config": cfg.to_dict(),
    }
    if placements:
        report["workers"] = placements
    if out is not None:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            model.to("cpu").save_pretrained(str(tmp), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
            write_json(tmp / REPORT_FILE, report)
            _write_curve(tmp / "pretrain_curve.png", run["history"])
    return PretrainResult(
        out=Path(out) if out is not None else None,
        before=run["before"],
        after=run["after"],
        history=run["history"],
        train_seconds=run["seconds"],
        samples_per_s=run["samples"] / max(run["seconds"], 1e-9),
        head_was_new=head_new,
        interrupted=run["interrupted"],
        notes=notes,
        placements=placements,
    )


def _pretrain_replica(
    cfg: PretrainConfig,
    train_ex: list[Example],
    val_ex: list[Example],
    initial: dict[str, torch.Tensor],
    head_new: bool,
    precision: str,
    progress: bool,
    replicas: Replicas,
) -> dict[str, Any] | None:
    """One worker's :func:`_adapt`, from the caller's weights; rank 0 answers with the weights and the report."""
    seed_everything(cfg.seed + replicas.rank)
    device = replicas.device
    precision = resolve_precision(cfg.precision, device) if device.type == "cuda" else precision
    base_dir = resolve_base(cfg.base)
    tokenizer = load_tokenizer(base_dir)
    model, _ = load_pretraining_model(base_dir, nsp=cfg.nsp, device=device)
    model.load_state_dict(initial)
    model.to(device)
    run = _adapt(model, tokenizer, cfg, train_ex, val_ex, head_new, device, precision, progress, replicas)
    run["samples"] = replicas.total(run["samples"])
    if not replicas.leader:
        return None
    run["state"] = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return run


def _adapt(
    model: Any,
    tokenizer: Any,
    cfg: PretrainConfig,
    train_ex: list[Example],
    val_ex: list[Example],
    head_new: bool,
    device: torch.device,
    precision: str,
    progress: bool,
    replicas: Replicas | None,
) -> dict[str, Any]:
    """The head warm-up, then masked-LM (and NSP) training with held-out losses before, during and after.

    With ``replicas`` every worker trains on its shares; only rank 0 measures (the others' losses
    and history are empty) and shows progress.
    """
    measures = replicas is None or replicas.leader
    progress = progress and measures
    vocab_size = int(model.get_input_embeddings().weight.shape[0])
    train_data = _Data(train_ex, cfg, tokenizer, vocab_size)
    val_batches = _Data(val_ex, cfg, tokenizer, vocab_size).fixed_batches(cfg.seed + 2) if measures else []
    stream = train_data.stream(cfg.seed, replicas)
    history: list[dict[str, Any]] = []
    seconds = 0.0
    samples = 0

    def loss_of_batch(item: tuple[Batch, float]) -> tuple[torch.Tensor, int]:
        batch, weight = item
        mlm, nsp, _ = _losses(model, batch, device, precision)
        loss = mlm + nsp if nsp is not None else mlm
        return (loss * weight if weight != 1.0 else loss), len(batch.ids) if weight else 0

    attention = choose_attention(model, device, precision, cfg.max_length, cfg.batch_size)
    dropout = choose_dropout(model, device, precision, cfg.max_length)
    weights = choose_weights(model, device, precision, cfg.max_length)
    warm_steps = cfg.head_steps if head_new else 0
    if warm_steps:
        # The encoder (and the tied output matrix) stays fixed: only the new head's transform,
        # bias and, with NSP, the next-sentence classifier learn.
        for p in model.base_model.parameters():
            p.requires_grad_(False)
        head_params = [p for p in model.parameters() if p.requires_grad]
        opt = Optimization.from_config(cfg, steps=warm_steps, lr=cfg.head_lr)
        bar = ProgressBar(warm_steps, "warming up the MLM head", unit="steps", fields={"loss": "-"}, enabled=progress)
        warm = run_steps(
            model,
            head_params,
            stream,
            loss_of_batch,
            opt,
            bar=bar,
            replicas=replicas,
            attention=attention,
            dropout=dropout,
            weights=weights,
        )
        seconds, samples = seconds + warm.seconds, samples + warm.samples
        for p in model.parameters():
            p.requires_grad_(True)
        if warm.interrupted:  # nothing to measure against yet: stop the whole run
            raise KeyboardInterrupt
    before = heldout_loss(model, val_batches, device, precision) if measures else {}
    history.append({"step": 0, "epoch": 0.0, "train_loss": None, **before})
    if measures:
        log.info(
            "held-out masked-LM loss before adaptation %.4f (perplexity %.2f)", before["mlm_loss"], before["perplexity"]
        )

    steps_per_epoch = max(1, math.ceil(len(train_ex) / cfg.batch_size))
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))

    def evaluate(step: int, train_loss: float) -> bool:
        if replicas is not None:
            train_loss = replicas.mean(train_loss)
        if measures:
            entry = {"step": step, "epoch": round(step / steps_per_epoch, 4), "train_loss": round(train_loss, 5)}
            history.append({**entry, **heldout_loss(model, val_batches, device, precision)})
        return False

    params = [p for p in model.parameters() if p.requires_grad]
    opt = Optimization.from_config(cfg, steps=total)
    bar = ProgressBar(total, "pretraining", unit="steps", fields={"loss": "-"}, enabled=progress)
    eval_every = cfg.eval_steps or steps_per_epoch
    done = run_steps(
        model,
        params,
        stream,
        loss_of_batch,
        opt,
        bar=bar,
        evaluate=evaluate,
        eval_every=eval_every,
        replicas=replicas,
        attention=attention,
        dropout=dropout,
        weights=weights,
    )
    seconds, samples, interrupted = seconds + done.seconds, samples + done.samples, done.interrupted
    after = heldout_loss(model, val_batches, device, precision) if measures else {}
    if interrupted:
        history.append({"step": None, "epoch": None, "train_loss": None, **after})
    return {
        "before": before,
        "after": after,
        "history": history,
        "warm_steps": warm_steps,
        "seconds": seconds,
        "samples": samples,
        "interrupted": interrupted,
    }


def _write_curve(path: Path, history: list[dict[str, Any]]) -> None:
    """Held-out perplexity and train loss against steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from hrlm._fs import atomic_file

    points = [h for h in history if h.get("step") is not None]
    fig = Figure(figsize=(6.4, 3.6), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([h["step"] for h in points], [h["perplexity"] for h in points], marker="o", label="held-out perplexity")
    ax.set_xlabel("step (0 = after the head warm-up)")
    ax.set_ylabel("masked-LM perplexity")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    ax.set_title("Domain-adaptive pretraining")
    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png")
