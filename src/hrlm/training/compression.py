"""Smaller and faster models: pruning, int8 quantization, ONNX export, and what they cost in accuracy.

:func:`compress` reads a model folder and writes a new one (never over an existing folder):

- ``prune`` with ``prune_heads``: whole attention heads are removed, the lowest-magnitude ones of
  every layer; the layers then compute fewer heads, so this saves time and memory.
- ``prune`` alone: the smallest-magnitude weights of every linear layer of the transformer blocks
  are set to zero (unstructured). Dense kernels do not skip zeros, so this alone makes nothing
  faster or smaller on disk; it is the first step of sparse deployment and a way to measure how
  much a model can lose.
- with training data, a short recovery fine-tune follows the pruning (pruned weights stay zero).
- ``quantize="int8"``: the int8 backends are checked (``torch-int8``; ``onnx-int8`` with ``onnx``).
- ``onnx``: ``model.onnx`` (and ``model.int8.onnx``) are exported into the new folder.
- where OpenVINO is installed, its backends are checked too (``openvino-fp32``; ``openvino-bf16`` on a
  CPU with native bf16); they need no file in the folder. With ``quantize="int8"``, on a CPU with VNNI,
  NNCF calibrates ``openvino-int8`` on the held-out text and writes ``model.int8.xml`` into the folder.

With held-out labelled ``data``, every backend of the new folder is measured against the new
folder's own fp32 predictions, and against the original model: size on disk, docs/s, accuracy and
label agreement. The results are the table ``compress.md`` in the new folder and the agreement
checks in its ``hrlm.json``; ``--backend auto`` uses a backend other than fp32 only when its check
passed (see :func:`hrlm.inference.backends.check_passes`), and of those the fastest: the backends that
passed are timed again in interleaved rounds (:func:`hrlm.training.checks.race`), their checks record
the median and the speed against the others in the same rounds (``race_relative``), which picks.
"""

from __future__ import annotations

import copy
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from hrlm._fs import atomic_dir, atomic_file, write_json
from hrlm._version import __version__
from hrlm.config import CompressConfig, TrainConfig
from hrlm.data import Dataset, split_dataset
from hrlm.errors import ConfigError
from hrlm.inference import (
    MIN_CHECK_DOCS,
    ONNX_FILES,
    Predictor,
    check_passes,
    cpu_has_fast_bf16,
    cpu_has_vnni,
    default_threads,
    export_onnx,
    quantize_onnx_int8,
)
from hrlm.inference.mixed import NAME as MIXED
from hrlm.inference.openvino_backend import available as openvino_available
from hrlm.inference.openvino_backend import quantizer_available as openvino_quantizer_available
from hrlm.model_card import write_model_card
from hrlm.modeling import META_FILE, HrlmModel, ModelMeta, attention_heads, encoder_layers, load_model, save_model
from hrlm.modeling import prune_heads as remove_heads
from hrlm.training.checks import (
    OPENVINO_INT8,
    RACE_DOCS,
    RACE_ROUNDS,
    Checking,
    Measured,
    agreement_check,
    compressed_row,
    file_size,
    int8_search,
    load_labelled,
    measure,
    mixed_search,
    openvino_int8_search,
    race,
    relative_speeds,
    row,
    verdict,
)

log = logging.getLogger("hrlm")


@dataclass
class CompressResult:
    """What :func:`compress` wrote and measured."""

    out: Path
    rows: list[dict[str, Any]]
    checks: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)


def prune_linear(model: HrlmModel, fraction: float) -> list[nn.Linear]:
    """Zero the ``fraction`` smallest-magnitude weights of every linear layer of the transformer blocks.

    The pruning stays a mask over the weights (so that a recovery fine-tune keeps them at zero)
    until :func:`make_permanent`. Returns the pruned layers.
    """
    layers = [m for block in encoder_layers(model.encoder) for m in block.modules() if isinstance(m, nn.Linear)]
    for layer in layers:
        torch_prune.l1_unstructured(layer, "weight", amount=fraction)
    return layers


def make_permanent(layers: list[nn.Linear]) -> None:
    """Fold pruning masks into the weights."""
    for layer in layers:
        if torch_prune.is_pruned(layer):
            torch_prune.remove(layer, "weight")


def head_magnitudes(model: HrlmModel) -> list[list[float]]:
    """Per layer, the L2 norm of each attention head's query, key, value and output weights."""
    scores = []
    blocks: list[Any] = list(encoder_layers(model.encoder))
    for block in blocks:
        attn = block.attention
        size, count = int(attn.self.attention_head_size), int(attn.self.num_attention_heads)
        parts = [attn.self.query.weight, attn.self.key.weight, attn.self.value.weight, attn.output.dense.weight.T]
        norms = torch.zeros(count)
        for w in parts:
            norms += w.detach().float().reshape(count, size, -1).pow(2).sum(dim=(1, 2)).cpu()
        scores.append(norms.sqrt().tolist())
    return scores


def prune_attention_heads(model: HrlmModel, fraction: float) -> dict[int, list[int]]:
    """Remove ``round(fraction * heads)`` lowest-magnitude attention heads of every layer (at least one stays).

    Returns:
        The heads removed, by layer and original index.
    """
    plan: dict[int, list[int]] = {}
    for layer, scores in enumerate(head_magnitudes(model)):
        count = min(round(fraction * len(scores)), len(scores) - 1)
        if count > 0:
            plan[layer] = sorted(int(h) for h in np.argsort(scores, kind="stable")[:count])
    if not plan:
        heads = attention_heads(model.encoder)
        raise ConfigError(f"prune = {fraction} removes no head of layers with {heads} heads; use a larger fraction.")
    remove_heads(model.encoder, plan)
    return plan


def compress(
    model_dir: str | Path,
    out: str | Path,
    cfg: CompressConfig | None = None,
    *,
    data: str | Path | None = None,
    train_data: str | Path | None = None,
    progress: bool = False,
    overwrite: bool = False,
    **changes: Any,
) -> CompressResult:
    """Write a pruned, quantized and/or ONNX-exported copy of a model folder, and measure it.

    Args:
        model_dir: a folder written by ``hrlm train`` (or ``hrlm compress``).
        out: the new folder; an existing one is replaced only with ``overwrite`` (once the new one is complete).
        cfg: what to do (see :class:`CompressConfig`): ``prune`` a fraction of weights (or, with
            ``prune_heads``, of each layer's attention heads); ``quantize="int8"`` to check the int8
            backends (and export ``model.int8.onnx`` with ``onnx``); ``onnx`` to export ``model.onnx``;
            ``recovery_epochs`` of fine-tuning after pruning; the ``text_col`` and ``label_col`` of
            ``data`` and ``train_data`` (label: the model's by default); CPU ``threads``.
        data: held-out labelled data: size, docs/s, accuracy and agreement of every backend, and the
            agreement checks that let ``--backend auto`` use a quantized backend. Alone (nothing else
            asked for), the new folder holds the same weights with every available backend checked.
        train_data: labelled data for a short recovery fine-tune after pruning.
        changes: settings of :class:`CompressConfig` changed from ``cfg``'s, like ``quantize="int8"``.

    Returns:
        The new folder, the table rows and the agreement checks.

    Raises:
        ConfigError: ``out`` exists (without ``overwrite``) or is ``model_dir``, nothing was asked for, or a
            setting is unknown or out of range.

    Example:
        >>> compress("runs/router", "runs/router-int8", quantize="int8", data="holdout.csv")  # doctest: +SKIP
    """
    source, target = Path(model_dir), Path(out)
    if target.exists() and not overwrite:
        raise ConfigError(f"{target} already exists; choose another --out or pass --overwrite to replace it.")
    if target.resolve() == source.resolve():
        raise ConfigError(f"--out {target} is the model folder itself; compress writes a new folder.")
    cfg = CompressConfig.from_dict({**(cfg or CompressConfig()).to_dict(), **changes})
    prune, prune_heads, quantize, onnx = cfg.prune, cfg.prune_heads, cfg.quantize, cfg.onnx
    recovery_epochs, text_col, label_col = cfg.recovery_epochs, cfg.text_col, cfg.label_col
    if prune == 0 and quantize is None and not onnx and data is None:
        raise ConfigError("nothing to do; pass --prune, --quantize int8, --onnx, or --data to check the backends.")
    if train_data is not None and prune == 0:
        raise ConfigError("--train-data is for the recovery fine-tune after pruning; pass --prune too.")
    threads = cfg.threads or default_threads()

    model, tokenizer, meta = load_model(source)
    held_out = load_labelled(data, meta, text_col, label_col) if data is not None else None
    train_ds = load_labelled(train_data, meta, text_col, label_col) if train_data is not None else None
    notes: list[str] = []
    if held_out is not None and len(held_out) < MIN_CHECK_DOCS:
        notes.append(
            f"{data} has {len(held_out)} documents; an agreement check needs at least {MIN_CHECK_DOCS}, "
            "so --backend auto will not use a quantized backend."
        )
    if held_out is None and (quantize or onnx):
        notes.append("no --data: nothing was checked, so --backend auto keeps using fp32 for this model.")

    rows: list[dict[str, Any]] = []
    measured: dict[str, Measured] = {}
    if held_out is not None:
        original = Predictor(model, tokenizer, meta, backend="torch-fp32", device="cpu", threads=threads, folder=source)
        measured["original"] = measure(original, held_out)
        rows.append(row("original torch-fp32", file_size(source / "model.safetensors"), measured["original"], None))

    settings: dict[str, Any] = {"prune": prune, "prune_heads": prune_heads, "quantize": quantize, "onnx": onnx}
    if prune > 0:
        settings.update(
            _prune(model, tokenizer, meta, prune, prune_heads, train_ds, recovery_epochs, threads, progress)
        )
        if not prune_heads:
            notes.append(
                "unstructured pruning zeroes weights but dense kernels still multiply them: same size and speed."
            )

    new_meta = copy.deepcopy(meta)
    new_meta.hrlm_version = __version__
    # the source's checks describe its own run (and name the layers its torch-int8 kept in float32):
    # every backend of the new folder is checked afresh, starting from int8 in every layer
    new_meta.backend_checks = {}
    backends = ["torch-fp32"]
    if cpu_has_fast_bf16():
        backends.append("torch-bf16")
    if quantize == "int8":
        backends.append("torch-int8")
    # bf16 with smoothed int8 products: only where both are native (see hrlm.inference.mixed)
    mixed = quantize == "int8" and held_out is not None and cpu_has_fast_bf16() and cpu_has_vnni()
    if onnx:
        backends += ["onnx-fp32", *(["onnx-int8"] if quantize == "int8" else [])]
    if held_out is not None and openvino_available():  # nothing to write: checked where installed
        backends += ["openvino-fp32", *(["openvino-bf16"] if cpu_has_fast_bf16() else [])]

    with atomic_dir(target, overwrite=overwrite) as tmp:
        save_model(model, tokenizer, new_meta, tmp)
        if onnx:
            export_onnx(model, tmp / ONNX_FILES["onnx-fp32"])
            if quantize == "int8":
                quantize_onnx_int8(tmp / ONNX_FILES["onnx-fp32"], tmp / ONNX_FILES["onnx-int8"])
        checks: dict[str, dict[str, Any]] = {}
        int8_tried: list[dict[str, Any]] = []
        if held_out is not None:
            weights_size = file_size(tmp / "model.safetensors")
            for name in backends:
                if name == "torch-fp32" and prune == 0:
                    result = measured["original"]  # the very same weights
                else:
                    predictor = Predictor(
                        model, tokenizer, new_meta, backend=name, device="cpu", threads=threads, folder=tmp
                    )
                    result = measure(predictor, held_out)
                measured[name] = result
                reference = measured["torch-fp32"]
                checks[name] = agreement_check(result, reference, held_out, data, threads)
                size = file_size(tmp / ONNX_FILES[name]) if name in ONNX_FILES else weights_size
                rows.append(compressed_row(name, size, result, measured, checks[name]))
                if name == "torch-int8" and not check_passes(checks[name]) and len(held_out) >= MIN_CHECK_DOCS:
                    checks[name], measured[name], int8_tried = int8_search(
                        model, tokenizer, new_meta, held_out, data, reference, threads, tmp
                    )
                    kept = len(checks[name]["fp32_layers"])
                    rows[-1]["system"] += ", every layer"
                    rows.append(compressed_row(name, size, measured[name], measured, checks[name]))
                    rows[-1]["system"] += f", {kept} layers in fp32"
                    notes.append(
                        f"torch-int8 of every linear layer failed the agreement check; with the {kept} layers "
                        f"whose int8 output drifted most kept in float32 it "
                        f"{'passed' if check_passes(checks[name]) else 'still failed'} "
                        f"({verdict(checks[name])})."
                    )
            run = Checking(model, tokenizer, held_out, data, threads, tmp, measured, rows, notes)
            if mixed:
                found = mixed_search(run, new_meta)
                if found is not None:
                    checks[MIXED] = found
            if quantize == "int8" and openvino_quantizer_available():
                if cpu_has_vnni():
                    found = openvino_int8_search(run, new_meta)
                    if found is not None:
                        checks[OPENVINO_INT8] = found
                else:  # auto would not use it here; its calibration and check cost minutes
                    notes.append(
                        f"{OPENVINO_INT8} not checked: this CPU has no VNNI, where OpenVINO's int8 products run "
                        "slower than float32; run compress on the kind of machine that will serve the model."
                    )
            _race(checks, model, tokenizer, new_meta, held_out, threads, tmp, notes)
            fp32 = measured["torch-fp32"]
            new_meta.metrics = {"split": f"hrlm compress --data {Path(str(data)).name}", **fp32.metrics}
        elif prune > 0:
            new_meta.metrics = {}  # the source's metrics describe other weights
        new_meta.backend_checks = checks
        new_meta.extra = {**meta.extra, "compress": {"source": str(source), **settings, "notes": notes}}
        write_json(tmp / META_FILE, new_meta.to_dict())
        summary = {"settings": settings, "rows": rows, "checks": checks, "notes": notes}
        write_json(tmp / "compress.json", {**summary, **({"int8_search": int8_tried} if int8_tried else {})})
        with atomic_file(tmp / "compress.md") as fh:
            fh.write(markdown_table(rows, source, settings, notes))
        write_model_card(tmp, name=target.name)
    return CompressResult(out=target, rows=rows, checks=checks, notes=notes)


def _race(
    checks: dict[str, dict[str, Any]],
    model: HrlmModel,
    tokenizer: Any,
    meta: ModelMeta,
    held_out: Dataset,
    threads: int,
    folder: Path,
    notes: list[str],
) -> None:
    """Replace the docs/s of the backends that passed their checks with medians of interleaved rounds
    (:func:`hrlm.training.checks.race`): what ``--backend auto`` picks its backend by."""
    passing = [name for name, check in checks.items() if check_passes(check)]
    if len(passing) < 2:
        return
    meta.backend_checks = checks  # the predictors read their layers (int8 kept in float32, ...) from it
    predictors = {
        name: Predictor(model, tokenizer, meta, backend=name, device="cpu", threads=threads, folder=folder)
        for name in passing
    }
    texts = held_out.texts[:RACE_DOCS]
    # rounded as the checks record them, so that race_relative can be computed again from docs_per_s_runs
    runs = {name: [round(x, 2) for x in speeds] for name, speeds in race(predictors, texts).items()}
    relative = relative_speeds(runs)
    for name, speeds in runs.items():
        checks[name]["docs_per_s"] = round(statistics.median(speeds), 2)
        checks[name]["docs_per_s_runs"] = speeds
        checks[name]["race_relative"] = round(relative[name], 4)
    fastest = max(passing, key=lambda name: relative[name])
    notes.append(
        f"the {len(passing)} backends that passed were timed again in {RACE_ROUNDS} interleaved rounds on "
        f"{len(texts)} documents; --backend auto serves the fastest against the others in the same rounds, "
        f"{fastest} ({checks[fastest]['docs_per_s']:.1f} docs/s, median; {relative[fastest]:.2f} times the others "
        "in the same rounds, geometric mean)."
    )


def _prune(
    model: HrlmModel,
    tokenizer: Any,
    meta: ModelMeta,
    fraction: float,
    heads: bool,
    train_ds: Dataset | None,
    epochs: float,
    threads: int,
    progress: bool,
) -> dict[str, Any]:
    """Prune, fine-tune briefly when there is training data, and make the pruning permanent."""
    from hrlm.training.fitting import finetune

    info: dict[str, Any] = {}
    pruned: list[nn.Linear] = []
    if heads:
        before = sum(attention_heads(model.encoder))
        info["removed_heads"] = {str(k): v for k, v in prune_attention_heads(model, fraction).items()}
        info["heads"] = f"{sum(attention_heads(model.encoder))} of {before}"
    else:
        pruned = prune_linear(model, fraction)
    if train_ds is not None:
        known = set(TrainConfig.names())
        stored = {k: v for k, v in meta.train_config.items() if k in known}
        cfg = TrainConfig.from_dict({**stored, "epochs": float(epochs), "threads": threads, "base": None})
        splits = split_dataset(train_ds, val_size=cfg.val_size, test_size=0.0, seed=cfg.seed)
        run = finetune(model, tokenizer, cfg, splits, progress=progress)
        info["recovery"] = {"epochs": epochs, "train_rows": len(splits["train"]), **run}
        model.to("cpu")
    make_permanent(pruned)
    model.eval()
    return info


def markdown_table(rows: list[dict[str, Any]], source: Path, settings: dict[str, Any], notes: list[str]) -> str:
    """The table of :func:`compress` as Markdown, for ``compress.md``."""
    lines = [f"# hrlm compress of {source}", "", "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), ""]
    if rows:
        keys = list(dict.fromkeys(k for row in rows for k in row))
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join("" if row.get(k) is None else str(row[k]) for k in keys) + " |" for row in rows]
    else:
        lines.append("Nothing was measured: pass --data to compare sizes, speed and accuracy.")
    lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"
