"""Run settings as validated data.

A :class:`TrainConfig` holds every setting of a training run; :class:`PretrainConfig`,
:class:`DistillConfig` and :class:`CompressConfig` those of ``hrlm pretrain``, ``distill`` and
``compress``. Precedence is the defaults, then a TOML file, then command-line flags; an unknown key is
an error, never a silent no-op. The resolved config is written into every model folder (``hrlm.json``)
so a run can be reproduced.

Each field is declared with :func:`setting`: its default and its help text live here once, and the
command line takes both from here (``hrlm.cli.app.option``).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Self

from hrlm.errors import ConfigError

TRUNCATE_MODES = ("none", "head", "head+tail")
AGGREGATIONS = ("mean", "max")
POOLINGS = ("auto", "pooler", "cls", "mean")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = (
    "auto",
    "torch-fp32",
    "torch-bf16",
    "torch-fp16",
    "torch-int8",
    "torch-bf16-int8",
    "onnx-fp32",
    "onnx-int8",
    "openvino-fp32",
    "openvino-bf16",
    "openvino-int8",
)
CLASS_WEIGHTS = ("none", "balanced")
METHODS = ("auto", "finetune", "setfit")
AUGMENT_MODES = ("none", "noise", "contextual", "both")
METRICS = ("macro_f1", "weighted_f1", "micro_f1", "accuracy", "loss")
QUANTIZE_MODES = ("int8",)

BACKEND_HELP = (
    "Inference backend: auto, torch-fp32, torch-bf16, torch-fp16 (CUDA), torch-int8, torch-bf16-int8, onnx-fp32, "
    "onnx-int8, openvino-fp32, openvino-bf16, openvino-int8. "
    "auto uses a quantized one only where `hrlm compress` recorded a passing accuracy check."
)


def setting(default: Any, help: str) -> Any:
    """A field of a settings dataclass: its default and its one help text (``--help``, the docs).

    Where the default is ``None``, the help says what unset means, as ``(default: ...)``; any other
    default is shown by the command line itself, so the help does not repeat it.
    """
    return dataclasses.field(default=default, metadata={"help": help})


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Raise :class:`ConfigError` naming the setting when ``value`` is not one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"{name} = {value!r} is not valid; choose one of {', '.join(allowed)}.")


def _at_least(name: str, value: float, low: float) -> None:
    if value < low:
        raise ConfigError(f"{name} = {value!r} is too small; it must be at least {low}.")


def _fraction(name: str, value: float, *, inclusive_zero: bool = True) -> None:
    ok = (0.0 <= value < 1.0) if inclusive_zero else (0.0 < value < 1.0)
    if not ok:
        raise ConfigError(f"{name} = {value!r} must be a fraction in [0, 1).")


class _Settings:
    """What every settings dataclass shares: strict construction from TOML and flags, and back to a dict."""

    section: ClassVar[str] = ""
    __dataclass_fields__: ClassVar[dict[str, Any]]  # every subclass is a dataclass

    @classmethod
    def names(cls) -> list[str]:
        """Names of every setting."""
        return [f.name for f in fields(cls)]

    @classmethod
    def from_sources(cls, path: str | Path | None = None, **overrides: Any) -> Self:
        """Build a config from defaults, then a TOML file, then ``overrides`` (``None`` ignored).

        The TOML file may hold the keys at top level or under a table named by ``section``
        (``[train]``, ``[pretrain]``).

        Raises:
            ConfigError: the file is unreadable, or holds an unknown key or a bad value.
        """
        values: dict[str, Any] = {}
        if path is not None:
            values.update(load_toml(path, section=cls.section))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        """Build a config from a mapping; unknown keys raise :class:`ConfigError`."""
        known = set(cls.names())
        unknown = {k: v for k, v in values.items() if k not in known}
        if unknown:
            raise ConfigError(f"unknown setting(s) {sorted(unknown)}; valid keys are {sorted(known)}.")
        types = {f.name: str(f.type) for f in fields(cls)}
        clean: dict[str, Any] = {}
        for key, value in values.items():
            clean[key] = _coerce(key, value, types[key])
        return cls(**clean)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-serialisable mapping."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Self:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclass
class TrainConfig(_Settings):
    """Settings of one fine-tuning run.

    Every field has a working default; ``TrainConfig()`` trains a sensible single-label classifier
    on the packaged all-MiniLM-L6-v2 encoder.

    Example:
        >>> cfg = TrainConfig(epochs=2, max_length=128)
        >>> cfg.lr
        0.0001
    """

    section: ClassVar[str] = "train"

    # data
    text_col: str = setting("text", "Column holding the text.")
    label_col: str = setting("label", 'Column holding the label(s); "a,b" trains one head per column.')
    label_sep: str | None = setting(None, "Separator of several labels in one cell (multi-label).")
    task_weights: str | None = setting(
        None, 'Several label columns (--label-col "a,b"): loss weight per task, like "1,0.5".'
    )
    split_col: str | None = setting(None, "Column giving train/validation/test per row.")
    group_col: str | None = setting(None, "Column of groups kept on one side of the split.")
    strict: bool = setting(False, "Fail on empty texts or labels instead of dropping them.")
    val_size: float = setting(0.1, "Fraction held out for validation.")
    test_size: float = setting(0.1, "Fraction held out for the test report.")
    # encoder and long texts
    base: str | None = setting(None, "Local BERT-family model folder. (default: packaged all-MiniLM-L6-v2)")
    max_length: int = setting(256, "Tokens per window, special tokens included.")
    stride: int | None = setting(None, "Tokens shared by consecutive windows. (default: max-length / 4)")
    truncate: str = setting("none", "none = overlapping windows; head or head+tail keep one window.")
    aggregate: str = setting("mean", "How window logits combine per document.")
    pooling: str = setting("auto", "Document vector: pooler (BERT's), cls, mean, or auto (pooler; mean when frozen).")
    # optimisation
    epochs: float = setting(4.0, "Passes over the training data.")
    batch_size: int = setting(32, "Samples per batch; with --workers, the global batch, split across the workers.")
    grad_accum: int = setting(1, "Batches per optimizer step.")
    lr: float = setting(1e-4, "Peak learning rate of AdamW.")
    warmup_ratio: float = setting(0.06, "Fraction of steps of linear warmup.")
    weight_decay: float = setting(0.01, "AdamW weight decay.")
    max_grad_norm: float = setting(1.0, "Gradient norm clipping threshold.")
    dropout: float | None = setting(
        None, "Dropout of the encoder's hidden states and of the head. (default: the encoder's)"
    )
    attention_dropout: float | None = setting(
        None,
        "Dropout of the attention probabilities. (default: 0 on a CPU, where it forces the unfused "
        "attention path, 2.7x the step time; the encoder's on CUDA)",
    )
    group_by_length: bool = setting(
        False,
        "Batch samples of similar length together: less padding where batches are padded, but a point "
        "of accuracy lost on IMDB; packed batches carry no padding anyway.",
    )
    packing: bool | None = setting(
        None,
        "Lay each batch's texts end to end with no padding (BERT encoders on a CPU). (default: where "
        "the run's padding would cost more than packing does, as measured once on this machine)",
    )
    class_weights: str = setting("none", "none or balanced (weights classes by inverse frequency).")
    ema_epochs: float = setting(
        0.0,
        "Evaluate and keep a moving average of the weights over about this many epochs instead of the "
        "last weights (EMA); 0 = off.",
    )
    seed: int = setting(42, "Random seed.")
    # regularisation and schedule of evaluation
    early_stopping_patience: int = setting(2, "Evaluations without improvement before stopping; 0 = never.")
    metric: str = setting("macro_f1", "Validation metric: macro_f1, weighted_f1, micro_f1, accuracy, loss.")
    eval_steps: int | None = setting(None, "Evaluate every N optimizer steps. (default: every epoch)")
    freeze_layers: int = setting(0, "Freeze the embeddings and the bottom N layers (their output is cached).")
    freeze_encoder: bool = setting(False, "Train the head only, on cached features (auto then never picks SetFit).")
    # little data: few-shot method and augmentation of the training split
    method: str = setting(
        "auto",
        "finetune, setfit (few-shot), or auto: below --few-shot-below labels per class, the best of a head on "
        "frozen features, setfit and finetune by cross-validation; finetune above.",
    )
    few_shot_below: int = setting(16, "--method auto cross-validates the methods below this many texts per class.")
    setfit_pairs: int = setting(
        20, "SetFit: positive and negative partners drawn per text; each pair once, at most this many pairs per text."
    )
    setfit_lr: float = setting(2e-5, "SetFit: encoder learning rate.")
    augment: str = setting("none", "Augment the training split: none, noise (word deletion, swaps), contextual, both.")
    augment_copies: int = setting(1, "Augmented copies of each training text.")
    augment_seed: int = setting(13, "Seed of the augmentation.")
    augment_mlm: str | None = setting(
        None, "Encoder with a trained masked-LM head for contextual (hrlm pretrain --out)."
    )
    # hardware
    precision: str = setting("auto", "auto = bf16 where the hardware computes it natively.")
    device: str = setting("auto", "auto = CUDA when present.")
    threads: int | None = setting(None, "CPU threads. (default: the cores this process may use)")
    # more than one process: data-parallel training on Ray Train
    workers: int = setting(
        1,
        "Data-parallel processes on Ray Train (gloo on CPU, NCCL on GPU); --batch-size stays the global batch, "
        "so the learning rate needs no change.",
    )
    address: str | None = setting(None, "Ray cluster to join with --workers > 1. (default: start Ray on this machine)")
    # --method auto: the choice by cross-validation on the training split
    auto_budget: float = setting(
        600.0, "--method auto: seconds for choosing by cross-validation; methods estimated to take longer are skipped."
    )
    cv_folds: int = setting(5, "Folds of the cross-validation of --method auto (and hrlm tune) on small data.")
    # the model card (README.md of the model folder)
    intended_use: str | None = setting(
        None, "What the model is for, written into its model card. (default: routing and tagging HR text with review)"
    )

    def __post_init__(self) -> None:
        check_choice("truncate", self.truncate, TRUNCATE_MODES)
        check_choice("aggregate", self.aggregate, AGGREGATIONS)
        check_choice("pooling", self.pooling, POOLINGS)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("device", self.device, DEVICES)
        check_choice("class_weights", self.class_weights, CLASS_WEIGHTS)
        check_choice("metric", self.metric, METRICS)
        check_choice("method", self.method, METHODS)
        check_choice("augment", self.augment, AUGMENT_MODES)
        _at_least("few_shot_below", self.few_shot_below, 0)
        _at_least("setfit_pairs", self.setfit_pairs, 1)
        _at_least("augment_copies", self.augment_copies, 1)
        if not 0 < self.setfit_lr < 1:
            raise ConfigError(f"setfit_lr = {self.setfit_lr!r} must be between 0 and 1 (try 2e-5).")
        if self.method == "setfit" and self.freeze_encoder:
            raise ConfigError(
                "method = 'setfit' trains the encoder, which freeze_encoder keeps fixed; drop --method setfit "
                "(with a frozen encoder, auto trains the head on cached features) or --freeze-encoder."
            )
        if self.augment in ("contextual", "both") and not self.augment_mlm:
            raise ConfigError(
                f"augment = {self.augment!r} needs augment_mlm: the folder of an encoder with a trained "
                "masked-LM head (run `hrlm pretrain` and pass its --out folder)."
            )
        _at_least("max_length", self.max_length, 8)
        if self.max_length > 8192:
            raise ConfigError(f"max_length = {self.max_length} is too large; use at most 8192.")
        if self.stride is None:
            self.stride = self.max_length // 4
        _at_least("stride", self.stride, 0)
        if self.stride >= self.max_length - 2:
            raise ConfigError(
                f"stride = {self.stride} must be smaller than max_length - 2 = {self.max_length - 2}; "
                "stride is the number of tokens consecutive windows share."
            )
        if not self.epochs > 0:
            raise ConfigError(f"epochs = {self.epochs!r} must be greater than 0.")
        _at_least("batch_size", self.batch_size, 1)
        _at_least("grad_accum", self.grad_accum, 1)
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr = {self.lr!r} must be between 0 and 1 (try 1e-4).")
        _fraction("warmup_ratio", self.warmup_ratio)
        _at_least("ema_epochs", self.ema_epochs, 0.0)
        _at_least("weight_decay", self.weight_decay, 0.0)
        if not self.max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm = {self.max_grad_norm!r} must be greater than 0.")
        if self.dropout is not None:
            _fraction("dropout", self.dropout)
        if self.attention_dropout is not None:
            _fraction("attention_dropout", self.attention_dropout)
        _fraction("val_size", self.val_size)
        _fraction("test_size", self.test_size)
        if self.val_size + self.test_size >= 0.9:
            raise ConfigError("val_size + test_size must leave at least 10% of the data for training.")
        _at_least("early_stopping_patience", self.early_stopping_patience, 0)
        if self.eval_steps is not None:
            _at_least("eval_steps", self.eval_steps, 1)
        _at_least("freeze_layers", self.freeze_layers, 0)
        if self.threads is not None:
            _at_least("threads", self.threads, 1)
        if self.label_sep == "":
            raise ConfigError("label_sep must not be empty; omit it for single-label data.")
        _at_least("workers", self.workers, 1)
        if not self.auto_budget > 0:
            raise ConfigError(f"auto_budget = {self.auto_budget!r} must be greater than 0 seconds.")
        _at_least("cv_folds", self.cv_folds, 2)


@dataclass
class PretrainConfig(_Settings):
    """Settings of domain-adaptive pretraining (``hrlm pretrain``): masked LM, optionally with NSP.

    Example:
        >>> PretrainConfig(whole_word=True).mlm_probability
        0.15
    """

    section: ClassVar[str] = "pretrain"

    text_col: str = setting("text", "Column holding the text of a data file.")
    base: str | None = setting(None, "Local BERT-family model folder. (default: packaged all-MiniLM-L6-v2)")
    max_length: int = setting(256, "Tokens per input.")
    mlm_probability: float = setting(0.15, "Share of tokens masked.")
    whole_word: bool = setting(False, "Mask whole words rather than single word pieces.")
    nsp: bool = setting(False, "Add next-sentence prediction on sentence pairs (BERT only).")
    epochs: float = setting(1.0, "Passes over the corpus.")
    batch_size: int = setting(32, "Inputs per batch; with --workers, the global batch, split across the workers.")
    lr: float = setting(5e-5, "Peak learning rate of AdamW.")
    warmup_ratio: float = setting(0.06, "Fraction of steps of linear warmup.")
    weight_decay: float = setting(0.01, "AdamW weight decay.")
    max_grad_norm: float = setting(1.0, "Gradient norm clipping threshold.")
    head_steps: int = setting(300, "Steps training a new MLM head with the encoder frozen.")
    head_lr: float = setting(1e-3, "Learning rate of a new MLM head during its head_steps.")
    val_size: float = setting(0.05, "Fraction of documents held out to measure perplexity.")
    eval_steps: int | None = setting(None, "Measure every N steps. (default: every epoch)")
    seed: int = setting(42, "Random seed.")
    precision: str = setting("auto", "auto = bf16 where the hardware computes it natively.")
    device: str = setting("auto", "auto = CUDA when present.")
    threads: int | None = setting(None, "CPU threads. (default: the cores this process may use)")
    workers: int = setting(
        1,
        "Data-parallel processes on Ray Train (gloo on CPU, NCCL on GPU); --batch-size stays the global batch, "
        "so the learning rate needs no change.",
    )
    address: str | None = setting(None, "Ray cluster to join with --workers > 1. (default: start Ray on this machine)")

    def __post_init__(self) -> None:
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("device", self.device, DEVICES)
        _at_least("workers", self.workers, 1)
        _at_least("max_length", self.max_length, 16)
        if not 0.0 < self.mlm_probability < 1.0:
            raise ConfigError(f"mlm_probability = {self.mlm_probability!r} must be between 0 and 1 (try 0.15).")
        if not self.epochs > 0:
            raise ConfigError(f"epochs = {self.epochs!r} must be greater than 0.")
        _at_least("batch_size", self.batch_size, 1)
        for name in ("lr", "head_lr"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"{name} = {getattr(self, name)!r} must be between 0 and 1.")
        _fraction("warmup_ratio", self.warmup_ratio)
        _at_least("weight_decay", self.weight_decay, 0.0)
        if not self.max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm = {self.max_grad_norm!r} must be greater than 0.")
        _at_least("head_steps", self.head_steps, 0)
        _fraction("val_size", self.val_size, inclusive_zero=False)
        if self.eval_steps is not None:
            _at_least("eval_steps", self.eval_steps, 1)
        if self.threads is not None:
            _at_least("threads", self.threads, 1)


@dataclass
class DistillConfig(_Settings):
    """Settings of distillation (``hrlm distill``): the student, its loss, and how long it trains.

    The student reads and splits data as its teacher's run did; ``epochs``, ``lr``, ``batch_size``,
    ``device`` and ``threads`` (:meth:`training`) go into the :class:`TrainConfig` of its training.

    Example:
        >>> DistillConfig(layers=2).temperature
        2.0
    """

    section: ClassVar[str] = "distill"

    layers: int = setting(3, "Transformer layers of the student, taken from the teacher's.")
    temperature: float = setting(2.0, "Softens both models' logits in the soft loss.")
    alpha: float = setting(0.5, "Weight of the teacher's soft labels; 1 - alpha weighs gold labels.")
    epochs: float = setting(3.0, "Passes over the training text.")
    lr: float = setting(1e-4, "Peak learning rate of AdamW.")
    batch_size: int = setting(32, "Windows per batch.")
    device: str = setting("auto", "auto = CUDA when present.")
    threads: int | None = setting(None, "CPU threads. (default: the cores this process may use)")

    TRAINING: ClassVar[tuple[str, ...]] = ("epochs", "lr", "batch_size", "device", "threads")

    def __post_init__(self) -> None:
        check_choice("device", self.device, DEVICES)
        _at_least("layers", self.layers, 1)
        if not self.temperature > 0:
            raise ConfigError(f"temperature = {self.temperature!r} must be greater than 0 (try 2).")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha = {self.alpha!r} must be between 0 and 1.")
        if not self.epochs > 0:
            raise ConfigError(f"epochs = {self.epochs!r} must be greater than 0.")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr = {self.lr!r} must be between 0 and 1 (try 1e-4).")
        _at_least("batch_size", self.batch_size, 1)
        if self.threads is not None:
            _at_least("threads", self.threads, 1)

    def training(self) -> dict[str, Any]:
        """The settings that go into the student's :class:`TrainConfig`, by name."""
        return {name: getattr(self, name) for name in self.TRAINING}


@dataclass
class CompressConfig(_Settings):
    """Settings of ``hrlm compress``: what to prune, quantize or export, and how to read the check data.

    Example:
        >>> CompressConfig(quantize="int8", onnx=True).prune
        0.0
    """

    section: ClassVar[str] = "compress"

    prune: float = setting(0.0, "Fraction of weights (with --prune-heads: of each layer's heads) to remove.")
    prune_heads: bool = setting(False, "Remove whole attention heads: smaller and faster.")
    quantize: str | None = setting(
        None,
        "int8: check the int8 backends (and export int8 ONNX; with --data, OpenVINO and VNNI, make openvino-int8).",
    )
    onnx: bool = setting(False, "Export model.onnx (and model.int8.onnx) into --out.")
    recovery_epochs: float = setting(1.0, "Length of the recovery fine-tune, in epochs.")
    text_col: str = setting("text", "Column holding the text.")
    label_col: str | None = setting(None, "Column holding the label(s). (default: the model's)")
    threads: int | None = setting(None, "CPU threads. (default: the cores this process may use)")

    def __post_init__(self) -> None:
        if not 0.0 <= self.prune < 1.0:
            raise ConfigError(f"prune = {self.prune} must be a fraction in [0, 1).")
        if self.prune_heads and self.prune == 0:
            raise ConfigError("--prune-heads needs --prune, the fraction of each layer's heads to remove (e.g. 0.25).")
        if self.quantize is not None:
            check_choice("quantize", self.quantize, QUANTIZE_MODES)
        if not self.recovery_epochs > 0:
            raise ConfigError(f"recovery_epochs = {self.recovery_epochs!r} must be greater than 0.")


BATCH_ENGINES = ("local", "ray")
BATCH_FORMATS = ("parquet", "csv")


@dataclass
class BatchConfig(_Settings):
    """Settings of ``hrlm batch``: how to read the input, where to score it, what to write.

    Example:
        >>> BatchConfig(engine="ray", actors=4).batch_rows
        4096
    """

    section: ClassVar[str] = "batch"

    engine: str = setting("local", "Where to score: local (one process, streaming) or ray (Ray Data actors).")
    address: str | None = setting(None, "Ray cluster to join with --engine ray. (default: start Ray on this machine)")
    text_col: str = setting("text", "Column holding the text.")
    format: str = setting("parquet", "Output shards: parquet or csv.")
    batch_rows: int = setting(4096, "Rows read, scored and written at a time: the unit of memory and of resumption.")
    actors: int | None = setting(None, "Ray actors, one model each. (default: one per GPU, else cores / threads)")
    threads: int | None = setting(
        None, "CPU threads per process or Ray actor. (default: all cores; on Ray, cores / actors)"
    )
    backend: str = setting("auto", BACKEND_HELP)

    def __post_init__(self) -> None:
        check_choice("engine", self.engine, BATCH_ENGINES)
        check_choice("format", self.format, BATCH_FORMATS)
        check_choice("backend", self.backend, BACKENDS)
        _at_least("batch_rows", self.batch_rows, 1)
        if self.actors is not None:
            _at_least("actors", self.actors, 1)
        if self.threads is not None:
            _at_least("threads", self.threads, 1)
        if self.address is not None and self.engine != "ray":
            raise ConfigError("--address joins a Ray cluster; it needs --engine ray.")


def _coerce(key: str, value: Any, annotation: str) -> Any:
    """Check a value against a field's annotation; widen ints to floats where a float is wanted."""
    if value is None and "None" in annotation:
        return None
    base = annotation.split("|")[0].strip()
    if base == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = {"int": int, "float": float, "str": str, "bool": bool}[base]
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{key} = {value!r} must be a {base}.")
    return value


def load_toml(path: str | Path, section: str | None = None) -> dict[str, Any]:
    """Read a TOML file; with ``section``, return that table when the file has one."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found; pass an existing TOML file to --config.")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {exc}.") from None
    if section and isinstance(data.get(section), dict):
        return dict(data[section])
    return data
