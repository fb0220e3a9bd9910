"""An encoder with task heads: build, freeze, save and load.

One shared BERT-family encoder feeds one linear head per task. A single-task model is saved under
the key names of Hugging Face's ``BertForSequenceClassification`` (``bert.*``, ``classifier.*``)
so that ``AutoModelForSequenceClassification.from_pretrained(folder)`` loads it and gives the same
logits; further task heads are saved as ``hrlm_heads.<task>.*``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hrlm.errors import ConfigError, ModelError, ModelNotFound

META_FILE = "hrlm.json"
FORMAT_VERSION = 1


@dataclass
class TaskSpec:
    """One prediction task: its labels, whether several can apply, and decision thresholds."""

    name: str
    labels: list[str]
    multi_label: bool = False
    thresholds: list[float] | None = None

    def __post_init__(self) -> None:
        if len(self.labels) < 1:
            raise ConfigError(f"task {self.name!r} has no labels.")
        if self.thresholds is not None and len(self.thresholds) != len(self.labels):
            raise ConfigError(f"task {self.name!r}: {len(self.thresholds)} thresholds for {len(self.labels)} labels.")


@dataclass
class ModelMeta:
    """What ``hrlm.json`` records beside the weights."""

    tasks: list[TaskSpec]
    pooling: str
    max_length: int
    stride: int
    truncate: str
    aggregate: str
    base_encoder: str
    hrlm_version: str = ""
    data_fingerprint: str | None = None
    train_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # backend name -> agreement check with fp32 on held-out data (see hrlm.inference.backends.check_passes)
    backend_checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    format: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMeta:
        data = dict(data)
        data["tasks"] = [TaskSpec(**t) for t in data.get("tasks", [])]
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks of a BERT-family encoder."""
    for path in ("encoder.layer", "transformer.layer", "encoder.layers", "layers"):
        obj: Any = encoder
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ModelError(f"cannot find the transformer layers of a {type(encoder).__name__}.")


class HrlmModel(nn.Module):
    """A BERT-family encoder with one linear head per task.

    ``forward`` returns a dict of logits by task name. ``pool`` returns the document vectors the
    heads read, so that a frozen encoder's output can be computed once and cached.
    """

    def __init__(self, encoder: Any, tasks: list[TaskSpec], *, pooling: str, dropout: float = 0.1) -> None:
        super().__init__()
        if pooling == "pooler" and getattr(encoder, "pooler", None) is None:
            raise ConfigError(
                f"pooling = 'pooler' but the {type(encoder).__name__} has no pooler; use 'cls' or 'mean'."
            )
        self.encoder = encoder
        self.tasks = list(tasks)
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        hidden = int(encoder.config.hidden_size)
        heads = {t.name: nn.Linear(hidden, len(t.labels)) for t in self.tasks}
        for head in heads.values():
            nn.init.normal_(head.weight, std=getattr(encoder.config, "initializer_range", 0.02))
            nn.init.zeros_(head.bias)
        self.heads = nn.ModuleDict(heads)

    @property
    def config(self) -> Any:
        return self.encoder.config

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Document vectors, one per row of ``input_ids``."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return self._pool_hidden(out.last_hidden_state, attention_mask, out.pooler_output)

    def _pool_hidden(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, pooler_output: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.pooling == "pooler":
            return pooler_output if pooler_output is not None else self.encoder.pooler(hidden)
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    @property
    def splits_at_layers(self) -> bool:
        """Whether :meth:`lower` and :meth:`upper` can run this encoder in two parts (BERT-style layout)."""
        layers = getattr(getattr(self.encoder, "encoder", None), "layer", None)
        return hasattr(self.encoder, "embeddings") and isinstance(layers, nn.ModuleList)

    def _block_mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)

    def lower(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: int) -> torch.Tensor:
        """Hidden states after the embeddings and the bottom ``layers`` blocks (see :meth:`upper`)."""
        hidden = self.encoder.embeddings(input_ids=input_ids)
        mask = self._block_mask(hidden, attention_mask)
        for block in self.encoder.encoder.layer[:layers]:
            hidden = block(hidden, mask)
        return hidden

    def upper(self, hidden: torch.Tensor, attention_mask: torch.Tensor, layers: int) -> dict[str, torch.Tensor]:
        """Logits from the hidden states after the bottom ``layers`` blocks.

        ``upper(lower(ids, mask, n), mask, n)`` equals ``forward(ids, mask)``: training with frozen
        bottom layers computes ``lower`` once per window and only ``upper`` in every epoch.
        """
        mask = self._block_mask(hidden, attention_mask)
        for block in self.encoder.encoder.layer[layers:]:
            hidden = block(hidden, mask)
        return self.head_logits(self._pool_hidden(hidden, attention_mask))

    def head(self, task: str) -> nn.Linear:
        """The linear head of ``task``."""
        head = self.heads[task]
        assert isinstance(head, nn.Linear)
        return head

    def head_logits(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every task from pooled features."""
        x = self.dropout(features)
        # an encoder in bf16 without autocast (inference on a CPU) feeds float32 heads
        return {name: head(x.to(head.weight.dtype)) for name, head in self.heads.items()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head_logits(self.pool(input_ids, attention_mask))

    def freeze(self, layers: int = 0, *, encoder: bool = False) -> None:
        """Stop gradients through the embeddings and the bottom ``layers`` blocks, or the whole encoder."""
        if encoder:
            for p in self.encoder.parameters():
                p.requires_grad_(False)
            return
        if layers <= 0:
            return
        blocks = encoder_layers(self.encoder)
        if layers > len(blocks):
            raise ConfigError(f"freeze_layers = {layers} but the encoder has only {len(blocks)} layers.")
        embeddings = getattr(self.encoder, "embeddings", None)
        if embeddings is not None:
            for p in embeddings.parameters():
                p.requires_grad_(False)
        for block in blocks[:layers]:
            for p in block.parameters():
                p.requires_grad_(False)


def _slice_linear(layer: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A smaller copy of ``layer`` keeping output rows (``dim=0``) or input columns (``dim=1``) ``index``."""
    weight = layer.weight.detach().index_select(dim, index.to(layer.weight.device)).clone()
    bias = layer.bias.detach() if layer.bias is not None else None
    if bias is not None and dim == 0:
        bias = bias.index_select(0, index.to(bias.device))
    out_features, in_features = weight.shape
    new = nn.Linear(in_features, out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    new.weight.data.copy_(weight)
    if bias is not None:
        assert new.bias is not None
        new.bias.data.copy_(bias)
    return new


def attention_heads(encoder: Any) -> list[int]:
    """Number of attention heads of each transformer block (BERT-style encoders)."""
    blocks: list[Any] = list(encoder_layers(encoder))
    return [int(block.attention.self.num_attention_heads) for block in blocks]


def prune_heads(encoder: Any, heads: dict[int, list[int]]) -> None:
    """Remove attention heads in place: ``heads[layer]`` lists the heads to drop, by current index.

    transformers 5 no longer prunes heads, so this slices the query, key and value rows and the
    output projection's columns of the dropped heads: the layer then computes fewer heads. The heads
    kept per layer are recorded in the config (``hrlm_kept_heads``) so that the folder reloads with
    the smaller shapes.

    Raises:
        ConfigError: every head of a layer would be removed, or the encoder is not BERT-style.
    """
    blocks: list[Any] = list(encoder_layers(encoder))
    for index, drop in heads.items():
        try:
            attn = blocks[index].attention
            self_attn = attn.self
            size, count = int(self_attn.attention_head_size), int(self_attn.num_attention_heads)
        except AttributeError:
            kind = type(encoder).__name__
            raise ConfigError(f"cannot prune attention heads of a {kind}; only BERT-style encoders.") from None
        keep = [h for h in range(count) if h not in set(drop)]
        if not keep:
            raise ConfigError(f"cannot remove all {count} attention heads of layer {index}; keep at least one.")
        rows = torch.cat([torch.arange(h * size, (h + 1) * size) for h in keep])
        for name in ("query", "key", "value"):
            setattr(self_attn, name, _slice_linear(getattr(self_attn, name), rows, dim=0))
        attn.output.dense = _slice_linear(attn.output.dense, rows, dim=1)
        self_attn.num_attention_heads = len(keep)
        self_attn.all_head_size = len(keep) * size
    encoder.config.hrlm_kept_heads = attention_heads(encoder)


def default_pooling(encoder: nn.Module, requested: str, *, freeze_encoder: bool = False) -> str:
    """``auto`` means BERT's trained pooler when the encoder has one, mean pooling otherwise.

    A frozen encoder uses mean pooling: an untuned pooler on top of a sentence encoder throws
    information away that a linear head cannot recover.
    """
    if requested != "auto":
        return requested
    if freeze_encoder or getattr(encoder, "pooler", None) is None:
        return "mean"
    return "pooler"


def quiet_transformers() -> None:
    """No per-file progress bars from transformers: hrlm shows its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def set_dropout(config: Any, hidden: float | None, attention: float | None) -> None:
    """Set a transformers config's dropout of hidden states and of attention probabilities (``None``: keep)."""
    for keys, value in ((("hidden_dropout_prob", "dropout"), hidden), (ATTENTION_DROPOUT_KEYS, attention)):
        if value is not None:
            for key in keys:
                if hasattr(config, key):
                    setattr(config, key, value)


# The config fields that hold the dropout of attention probabilities (BERT's, DistilBERT's).
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout")


def attention_dropout_for(requested: float | None, device: Any) -> float | None:
    """The attention dropout to train with: ``requested``, else 0 on a CPU and the encoder's own (``None``) on CUDA.

    On a CPU, PyTorch's fused attention kernel has no dropout, so any attention dropout sends every
    layer through the unfused path: scores, a random mask and their products materialised for every
    head; measured on a 2-core AMD EPYC (MiniLM, 32 reviews of 256 tokens, bf16), a training step took
    6.8 s with the encoder's 0.1 and 2.5 s without. On CUDA the fused kernels apply dropout themselves.

    Example:
        >>> attention_dropout_for(None, "cpu"), attention_dropout_for(0.1, "cpu"), attention_dropout_for(None, "cuda")
        (0.0, 0.1, None)
    """
    if requested is not None:
        return requested
    return 0.0 if str(getattr(device, "type", device)) == "cpu" else None


def build_model(
    base_dir: str | os.PathLike[str],
    tasks: list[TaskSpec],
    *,
    pooling: str = "auto",
    dropout: float | None = None,
    attention_dropout: float | None = None,
    freeze_encoder: bool = False,
) -> HrlmModel:
    """A fresh model: pretrained encoder from ``base_dir`` and newly initialised heads.

    ``dropout`` replaces the encoder's hidden-state dropout (and sets the head's), ``attention_dropout``
    its dropout of attention probabilities; ``None`` keeps the encoder's own.
    """
    from transformers import AutoConfig, AutoModel

    quiet_transformers()
    config = AutoConfig.from_pretrained(str(base_dir), local_files_only=True)
    set_dropout(config, dropout, attention_dropout)
    # float32 master weights whatever the checkpoint holds: transformers 5 loads a folder in its saved
    # dtype, and an fp16 or bf16 checkpoint trained as such loses its small updates to rounding
    encoder = AutoModel.from_pretrained(str(base_dir), config=config, local_files_only=True, dtype=torch.float32)
    chosen = default_pooling(encoder, pooling, freeze_encoder=freeze_encoder)
    head_dropout = dropout if dropout is not None else float(getattr(config, "hidden_dropout_prob", 0.1) or 0.1)
    return HrlmModel(encoder, tasks, pooling=chosen, dropout=head_dropout)


def _hf_compatible(model: HrlmModel) -> bool:
    # A head-pruned encoder has per-layer shapes that plain transformers 5 cannot rebuild.
    pruned = getattr(model.config, "hrlm_kept_heads", None)
    return model.pooling == "pooler" and model.config.model_type == "bert" and len(model.tasks) == 1 and not pruned


def _state_for_save(model: HrlmModel) -> dict[str, torch.Tensor]:
    prefix = model.encoder.base_model_prefix
    state = {f"{prefix}.{k}": v for k, v in model.encoder.state_dict().items()}
    for i, task in enumerate(model.tasks):
        name = "classifier" if i == 0 else f"hrlm_heads.{task.name}"
        head = model.head(task.name)
        state[f"{name}.weight"] = head.weight
        state[f"{name}.bias"] = head.bias
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}


def save_model(model: HrlmModel, tokenizer: Any, meta: ModelMeta, folder: str | os.PathLike[str]) -> None:
    """Write weights, configs, tokenizer and ``hrlm.json`` into an existing (temporary) folder."""
    from safetensors.torch import save_file

    out = Path(folder)
    config = model.config.__class__.from_dict(model.config.to_dict())
    first = model.tasks[0]
    config.id2label = dict(enumerate(first.labels))
    config.label2id = {lab: i for i, lab in enumerate(first.labels)}
    config.problem_type = "multi_label_classification" if first.multi_label else "single_label_classification"
    if _hf_compatible(model):
        config.architectures = ["BertForSequenceClassification"]
    else:
        config.architectures = [type(model.encoder).__name__]
    config.save_pretrained(str(out))
    save_file(_state_for_save(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(str(out))
    from hrlm._fs import write_json

    write_json(out / META_FILE, meta.to_dict())


def read_meta(folder: str | os.PathLike[str]) -> ModelMeta:
    """Read ``hrlm.json`` of a model folder."""
    path = Path(folder)
    if not path.exists():
        raise ModelNotFound(f"model folder {str(path)!r} not found; pass the --out folder of `hrlm train`.")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise ModelError(f"{str(path)!r} is not an hrlm model folder (no {META_FILE}); train one with `hrlm train`.")
    try:
        data = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelError(f"{meta_path} is damaged ({exc}); retrain or restore the model folder.") from None
    if int(data.get("format", 0)) > FORMAT_VERSION:
        raise ModelError(f"{path} was written by a newer hrlm (format {data['format']}); upgrade hrlm to load it.")
    return ModelMeta.from_dict(data)


def load_model(folder: str | os.PathLike[str]) -> tuple[HrlmModel, Any, ModelMeta]:
    """Load a model folder written by :func:`save_model`: model (eval mode), tokenizer, metadata."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    from hrlm.encoders import load_tokenizer

    quiet_transformers()
    path = Path(folder)
    meta = read_meta(path)
    if "ensemble" in meta.extra:  # written by hrlm.inference.build_ensemble: its models are under members/
        raise ModelError(
            f"{path} is an ensemble of several models; load it with hrlm.load or Predictor.from_dir, "
            f"or pass one of its members ({path / 'members'}/*) here."
        )
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{path} has no model.safetensors; the folder is incomplete.")
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    encoder = AutoModel.from_config(config)
    kept = getattr(config, "hrlm_kept_heads", None)
    if kept:  # a head-pruned model: shrink the layers to the saved shapes before loading the weights
        full = attention_heads(encoder)
        prune_heads(encoder, {i: list(range(k, n)) for i, (k, n) in enumerate(zip(kept, full, strict=True))})
    model = HrlmModel(encoder, meta.tasks, pooling=meta.pooling)
    state = load_file(str(weights))
    prefix = encoder.base_model_prefix + "."
    enc_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    missing, _ = encoder.load_state_dict(enc_state, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    if missing:
        raise ModelError(f"{weights} lacks encoder weights ({missing[:3]}...); the folder is damaged.")
    for i, task in enumerate(meta.tasks):
        name = "classifier" if i == 0 else f"hrlm_heads.{task.name}"
        try:
            head = model.head(task.name)
            head.weight.data.copy_(state[f"{name}.weight"])
            head.bias.data.copy_(state[f"{name}.bias"])
        except KeyError:
            raise ModelError(f"{weights} lacks the head of task {task.name!r}; the folder is damaged.") from None
    model.eval()
    return model, load_tokenizer(path), meta
