"""Inference backends: one interface over PyTorch, ONNX Runtime and OpenVINO, and the rule that picks one.

A backend turns a padded batch of token ids into the logits of every task::

    torch-fp32   PyTorch in float32: the reference every other backend is checked against
    torch-bf16   PyTorch with bf16 autocast: CUDA, or a CPU with AVX-512 BF16 / AMX
    torch-fp16   PyTorch with fp16 autocast (CUDA only)
    torch-int8   PyTorch dynamic int8 quantization of the transformer blocks' linear layers (CPU)
    torch-bf16-int8  bf16, with smoothed int8 query-key-value and feed-forward input products (CPU with
                 AVX-512 BF16 or AMX and VNNI; :mod:`hrlm.inference.mixed`)
    onnx-fp32    ONNX Runtime with its graph optimizations (CPU; ``pip install 'hrlm[onnx]'``)
    onnx-int8    ONNX Runtime with dynamically quantized int8 weights (CPU)
    openvino-fp32, openvino-bf16  OpenVINO's CPU plugin, fused attention (CPU; bf16 where native;
                 ``pip install 'hrlm[openvino]'``; :mod:`hrlm.inference.openvino_backend`)
    openvino-int8  OpenVINO with NNCF's static int8 (SmoothQuant), calibrated by ``hrlm compress`` (CPU)

``auto`` never silently loses accuracy: on a CPU it uses a backend other than fp32 (bf16 where the
CPU computes it natively) only when ``hrlm.json`` records that the backend passed an agreement check
on held-out data (see :func:`check_passes`), as ``hrlm compress`` writes; among those it takes the
one that was fastest in that check. On CUDA it is bf16 (fp32 where the GPU lacks bf16).

ONNX models come from the model folder (``model.onnx``, ``model.int8.onnx``, written by
``hrlm compress --onnx``) or, when the folder has none, are exported once into a cache
(``$HRLM_CACHE_DIR``, default ``~/.cache/hrlm``) keyed by a hash of the weights.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hrlm.config import BACKENDS, check_choice
from hrlm.errors import ConfigError, ModelError
from hrlm.inference import unpadded
from hrlm.inference.packing import Packed, transfer
from hrlm.modeling import HrlmModel, ModelMeta, encoder_layers

log = logging.getLogger("hrlm")

QUANTIZED = ("torch-int8", "torch-bf16-int8", "onnx-int8", "openvino-int8")
ONNX_FILES = {"onnx-fp32": "model.onnx", "onnx-int8": "model.int8.onnx"}
# The agreement check a non-reference backend must pass before `auto` uses it.
MIN_LABEL_AGREEMENT = 0.99
MAX_ACCURACY_DROP = 0.003
MIN_CHECK_DOCS = 100
# ... and no systematic shift of the documents' log-odds (see hrlm.training.checks.margin_shift): a check
# fails where the mean shift of one label's log-odds lies this many standard errors from zero ...
MAX_SHIFT_T = 4.0
# ... and is at least this large (smaller shifts move a negligible share of labels, however certain)
MIN_HARMFUL_SHIFT = 0.01
# A backend whose shift hrlm compress cancels with an output offset keeps the offset's error: its standard
# error (the uncorrected shift's) may be at most this, half the harmful size
MAX_OFFSET_SE = MIN_HARMFUL_SHIFT / 2


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of this CPU (``/proc/cpuinfo``, read once; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX-512 BF16 or AMX)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX int8)."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def autocast(device: torch.device, precision: str) -> Any:
    """An autocast context for ``precision`` (a no-op for fp32)."""
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=precision in ("bf16", "fp16"))


class Backend:
    """Runs the model on a padded batch: ``backend(ids, mask)`` gives float32 logits per task."""

    name: str = ""
    device = torch.device("cpu")

    @property
    def supports_packing(self) -> bool:
        """Whether :meth:`packed` runs windows laid end to end without padding (see :mod:`hrlm.inference.packing`)."""
        return False

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def packed(self, batch: Packed) -> dict[str, np.ndarray]:
        raise NotImplementedError(f"backend {self.name} does not run packed batches")

    @property
    def asynchronous(self) -> bool:
        """Whether :meth:`start` and :meth:`start_packed` queue a batch on a device and return at once.

        Their logits stay on the device until the caller reads them, so the host can prepare the next
        batch while the device computes this one (CUDA); :meth:`__call__` and :meth:`packed` wait.
        """
        return False

    def start(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """:meth:`__call__`, with float32 logits left where they were computed."""
        return {name: torch.from_numpy(value) for name, value in self(ids, mask).items()}

    def start_packed(self, batch: Packed) -> dict[str, torch.Tensor]:
        """:meth:`packed`, with float32 logits left where they were computed."""
        return {name: torch.from_numpy(value) for name, value in self.packed(batch).items()}

    def gather(self, pending: list[Any]) -> dict[str, np.ndarray]:
        """The logits of every batch :meth:`start` or :meth:`start_packed` queued, concatenated in their order."""
        return {name: torch.cat([p[name] for p in pending]).cpu().numpy() for name in pending[0]}

    def stream_choices(self) -> tuple[int, ...]:
        """The numbers of batches the backend can compute at once on this machine (see :attr:`streams`)."""
        return (1,)

    # Batches computed at once when several are queued: one (the default) uses every thread on one
    # batch; a runtime with streams (OpenVINO) can split the threads among several batches
    streams: int = 1


class TorchBackend(Backend):
    """The model in float32, in bf16 on a CPU, or under bf16/fp16 autocast on CUDA.

    In bf16 on a CPU the backend runs its own copy of the model whose encoder is bf16 throughout,
    without autocast (:func:`hrlm.inference.unpadded.cast_encoder`). Under autocast it runs a copy whose
    linear layers already hold bf16/fp16 weights (:func:`hrlm.inference.unpadded.cast_linears`: same
    results, no cast per forward pass); other parameters are shared with ``model``. Packed batches use
    one fused query-key-value projection per layer. Both are taken from ``model`` when the backend is built: build a new
    backend after training changes the weights.
    """

    def __init__(self, model: HrlmModel, device: torch.device, precision: str = "fp32", name: str = "") -> None:
        model = model.to(device)
        lowp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        # bf16 on a CPU: the whole encoder in bf16 and no autocast (see unpadded.cast_encoder)
        self.autocast = lowp is not None and not (lowp == torch.bfloat16 and device.type == "cpu")
        if lowp is None:
            self.model = model.eval()
        elif self.autocast:
            self.model = unpadded.cast_linears(model, lowp).eval()
        else:
            self.model = unpadded.cast_encoder(model, lowp).eval()
            self.autocast = self.model is model  # not copyable: autocast as before
        self.device = device
        self.precision = precision
        self.name = name or f"torch-{precision}"
        fused = unpadded.fuse_qkv(self.model.encoder) if unpadded.supports(self.model.encoder) else None
        self.qkv: list[nn.Module] | None = None if fused is None else list(fused)
        # widest attention group run as plain matrix products on a CPU; the calibration may change it
        self.plain_up_to = unpadded.SMALL_WIDTH

    @property
    def supports_packing(self) -> bool:
        return unpadded.supports(self.model.encoder)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the encoder's matrix products run in."""
        return precision_dtype(self.precision)

    def context(self) -> Any:
        """The autocast context the backend runs its model in (none when the weights are already low precision)."""
        return autocast(self.device, self.precision) if self.autocast else contextlib.nullcontext()

    @property
    def asynchronous(self) -> bool:
        return self.device.type == "cuda"

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, np.ndarray]:
        return _numpy(self.start(ids, mask))

    def packed(self, batch: Packed) -> dict[str, np.ndarray]:
        return _numpy(self.start_packed(batch))

    @torch.inference_mode()
    def start(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        ids, mask = transfer([ids, mask], self.device)
        with self.context():
            logits = self.model(ids, mask)
        return {name: value.float() for name, value in logits.items()}

    @torch.inference_mode()
    def start_packed(self, batch: Packed) -> dict[str, torch.Tensor]:
        with self.context():
            logits = unpadded.forward(self.model, batch.to(self.device), self.qkv, plain_up_to=self.plain_up_to)
        return {name: value.float() for name, value in logits.items()}


def _numpy(logits: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: value.cpu().numpy() for name, value in logits.items()}


def int8_linears(model: HrlmModel) -> list[str]:
    """The linear layers ``torch-int8`` quantizes, named ``<block>.<path>``: every one of the transformer blocks.

    Example:
        >>> int8_linears(model)[:2]  # doctest: +SKIP
        ['0.attention.self.query', '0.attention.self.key']
    """
    return [
        f"{i}.{name}"
        for i, block in enumerate(encoder_layers(model.encoder))
        for name, module in block.named_modules()
        if isinstance(module, nn.Linear)
    ]


def int8_fp32_layers(meta: ModelMeta) -> list[str]:
    """The layers that ``torch-int8`` keeps in float32 for this model: those its agreement check passed with."""
    return list(meta.backend_checks.get("torch-int8", {}).get("fp32_layers") or [])


@contextlib.contextmanager
def quiet_ao_quantization() -> Iterator[None]:
    """Silence the deprecation warnings of ``torch.ao.quantization``'s eager API, which works in the pinned torch.

    It is deprecated in favour of torchao, whose int8 needs ``torch.compile`` to be fast on a CPU.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor.*deprecated", category=UserWarning)
        yield


def quantize_torch_int8(model: HrlmModel, keep_fp32: Collection[str] = ()) -> HrlmModel:
    """A copy whose transformer blocks compute their linear layers in int8 (dynamic quantization).

    Embeddings, pooler and heads stay in float32: they cost little and the heads decide the label.
    ``keep_fp32`` names linear layers of the blocks (as :func:`int8_linears` does) that stay float32
    too: the ones whose int8 outputs drift furthest (see :mod:`hrlm.training.quantization`).
    """
    quantized = copy.deepcopy(model).to("cpu").eval()
    keep = set(keep_fp32)
    with quiet_ao_quantization():
        # One scale per output channel: measurably closer to fp32 than one per matrix, at the same speed.
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        for i, block in enumerate(encoder_layers(quantized.encoder)):
            spec = {
                name: qconfig
                for name, module in block.named_modules()
                if isinstance(module, nn.Linear) and f"{i}.{name}" not in keep
            }
            if spec:
                torch.ao.quantization.quantize_dynamic(block, spec, dtype=torch.qint8, inplace=True)
    return quantized


def onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a one-line error saying how to install it."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError(
            "the onnx backends need ONNX Runtime, which is not installed; run `pip install 'hrlm[onnx]'` "
            "or choose --backend torch-fp32."
        ) from None
    return ort


class OnnxBackend(Backend):
    """An ONNX Runtime session over an exported model, all graph optimizations on, on ``threads`` threads."""

    def __init__(self, path: Path, task_names: list[str], *, threads: int, name: str, config: Any = None) -> None:
        ort = onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path
        self.task_names = task_names
        self.name = name
        self.config = config  # the model's, for the calibration's cache key

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, np.ndarray]:
        outputs = self.session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        return {name: np.asarray(out, dtype=np.float32) for name, out in zip(self.task_names, outputs, strict=True)}


class _Logits(nn.Module):
    """The model with a tuple output, as ONNX export and OpenVINO's tracer want it."""

    def __init__(self, model: HrlmModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.model(input_ids, attention_mask)
        return tuple(logits[t.name] for t in self.model.tasks)


def traceable(model: HrlmModel) -> tuple[_Logits, tuple[torch.Tensor, torch.Tensor]]:
    """A float32 CPU copy of ``model`` with a tuple output, and an example batch to trace it with.

    The example batch has padding, so that a traced graph keeps the attention mask.
    """
    ids = torch.full((2, 8), 2, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return _Logits(copy.deepcopy(model).to("cpu").float()).eval(), (ids, mask)


def export_onnx(model: HrlmModel, path: str | os.PathLike[str]) -> Path:
    """Export encoder and heads to one ONNX file with dynamic batch and sequence axes.

    Inputs are ``input_ids`` and ``attention_mask`` (int64, batch x tokens); output ``i`` holds the
    logits of task ``i``.
    """
    onnxruntime()  # fail early, with the install hint, when the extra is missing
    target = Path(path)
    wrapper, (ids, mask) = traceable(model)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with warnings.catch_warnings(), quiet[0], quiet[1]:
        warnings.simplefilter("ignore")  # the exporter's notes on axis names and pytree deprecations
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            torch.onnx.export(
                wrapper,
                (ids, mask),
                str(target),
                input_names=["input_ids", "attention_mask"],
                output_names=[f"logits_{i}" for i in range(len(model.tasks))],
                dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        except Exception as exc:  # the exporter raises many kinds; the user needs one line and a way out
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ModelError(
                f"could not export the {type(model.encoder).__name__} to ONNX ({reason}); use a torch-* backend."
            ) from exc
    return target


def quantize_onnx_int8(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, reduce_range: bool | None = None
) -> Path:
    """Write an ONNX model whose matrix products use int8 weights, activations quantized on the fly.

    ``reduce_range`` (default: where this CPU has no VNNI) quantizes weights to 7 bits. Without VNNI,
    ONNX Runtime multiplies unsigned 8-bit activations by signed 8-bit weights with AVX2's
    ``vpmaddubsw``, whose 16-bit sums saturate: on a 2-core AVX2 EPYC the tiny test model's logits
    moved by up to 0.42 with full-range weights. ONNX Runtime's documentation gives the same advice.
    A file quantized on a CPU with VNNI and run on one without may lose accuracy that way: quantize
    again, or run ``hrlm compress`` on the kind of machine that serves the model.
    """
    onnxruntime()
    if reduce_range is None:
        reduce_range = not cpu_has_vnni()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()  # the quantizer logs every skipped tensor to the root logger
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            # Per-channel weight scales: slower than one scale per matrix, but fewer labels change.
            quantize_dynamic(
                str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range
            )
    finally:
        root.setLevel(level)
    return Path(dst)


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype matrix products run in at ``precision`` (``fp32``, ``bf16`` or ``fp16``).

    Example:
        >>> precision_dtype("bf16"), precision_dtype("fp32")
        (torch.bfloat16, torch.float32)
    """
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def cache_dir() -> Path:
    """Where exported ONNX models are kept: ``$HRLM_CACHE_DIR``, else ``~/.cache/hrlm``."""
    return Path(os.environ.get("HRLM_CACHE_DIR") or Path.home() / ".cache" / "hrlm")


def _weights_key(folder: Path, meta: ModelMeta) -> str:
    digest = hashlib.sha256()
    for name in ("model.safetensors", "config.json"):
        with (folder / name).open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    digest.update(f"{meta.pooling}|{[t.name for t in meta.tasks]}".encode())
    return digest.hexdigest()[:24]


def onnx_file(name: str, model: HrlmModel, meta: ModelMeta, folder: Path | None, scratch: list[Any]) -> Path:
    """The ONNX file of backend ``name``: the model folder's own, else one exported (once) to the cache.

    A model that lives only in memory is exported to a temporary folder that ``scratch`` keeps alive.
    """
    filename = ONNX_FILES[name]
    if folder is not None and (folder / filename).is_file():
        return folder / filename
    if folder is not None and (folder / "model.safetensors").is_file():
        where = cache_dir() / "onnx" / _weights_key(folder, meta)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="hrlm-onnx-")
        scratch.append(tmp)
        where = Path(tmp.name)
    if name == "onnx-int8" and not cpu_has_vnni():
        filename = "model.int8.7bit.onnx"  # see quantize_onnx_int8: a cache may be shared by other CPUs
    target = where / filename
    if target.is_file():
        return target
    where.mkdir(parents=True, exist_ok=True)
    fp32 = where / ONNX_FILES["onnx-fp32"]
    if not fp32.is_file():
        log.info("exporting the model to ONNX once (cached in %s)", where)
        _atomic(fp32, lambda p: export_onnx(model, p))
    if name == "onnx-int8":
        _atomic(target, lambda p: quantize_onnx_int8(fp32, p))
    return target


def _atomic(target: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def check_passes(check: dict[str, Any]) -> bool:
    """Whether a recorded agreement check allows ``auto`` to use its backend.

    At least :data:`MIN_CHECK_DOCS` held-out documents, label agreement with fp32 of at least 99%,
    accuracy no more than 0.3 points below fp32, and no systematic shift of the log-odds: a mean shift
    of at least :data:`MIN_HARMFUL_SHIFT` that lies :data:`MAX_SHIFT_T` or more standard errors from zero
    fails (checks recorded before hrlm measured the shift have none and are judged without it). A check
    whose backend gets an output offset (``output_offset``: the mean shift measured on the check's
    documents, cancelled) is judged on cross-fitted labels, and what is left of its shift is the offset's
    error: the uncorrected shift's standard error must be at most :data:`MAX_OFFSET_SE`, so that an
    error of two standard errors stays below the harmful size. The thresholds are applied here, to the
    recorded numbers, rather than trusting a stored verdict.
    """
    try:
        shift = check.get("margin_shift")
        shifted = shift is not None and (
            abs(float(shift["t"])) >= MAX_SHIFT_T and abs(float(shift["mean"])) >= MIN_HARMFUL_SHIFT
        )
        if "output_offset" in check:  # what is left of a corrected shift is the offset's error
            shifted = shifted or float(check["uncorrected"]["margin_shift"]["se"]) > MAX_OFFSET_SE
        return (
            int(check["n"]) >= MIN_CHECK_DOCS
            and float(check["label_agreement"]) >= MIN_LABEL_AGREEMENT
            and float(check["accuracy_delta"]) >= -MAX_ACCURACY_DROP - 1e-12
            and not shifted
        )
    except (KeyError, TypeError, ValueError):
        return False


def output_offset(meta: ModelMeta, name: str) -> dict[str, np.ndarray]:
    """What to add to each task's logits when backend ``name`` serves the model: the offsets ``hrlm compress``
    fitted where the backend moved the log-odds of fp32 one way (``output_offset`` in its check; see
    :func:`hrlm.training.checks.fit_offset`). Empty where the check recorded none.
    """
    check = (meta.backend_checks or {}).get(name) or {}
    offsets = check.get("output_offset") or {}
    sizes = {t.name: len(t.labels) for t in meta.tasks}
    out = {}
    for task, values in offsets.items():
        offset = np.asarray(values, dtype=np.float32)
        if offset.shape != (sizes.get(task, -1),):
            raise ModelError(
                f"hrlm.json: the {name} check's output_offset for task {task!r} has shape {offset.shape}, "
                f"not one value per label of a task of this model; run `hrlm compress --data` again."
            )
        out[task] = offset
    return out


def _onnx_available() -> bool:
    try:
        onnxruntime()
    except ConfigError:
        return False
    return True


def _openvino_available() -> bool:
    from hrlm.inference.openvino_backend import available  # it builds on this module

    return available()


@dataclass
class Choice:
    """The backend to build, the device it runs on, and why it was chosen."""

    name: str
    device: torch.device
    reason: str


def choose_backend(requested: str, meta: ModelMeta, device: torch.device, *, device_given: bool = False) -> Choice:
    """Resolve ``auto`` and check that an explicit backend can run here.

    Args:
        requested: one of :data:`hrlm.config.BACKENDS`.
        meta: the model's metadata; its ``backend_checks`` decide what ``auto`` may use.
        device: the resolved device (``cuda`` or ``cpu``).
        device_given: the caller asked for this device explicitly (so CPU-only backends are an error
            on CUDA rather than a quiet move to the CPU).

    Raises:
        ConfigError: the backend is unknown or cannot run on this device or installation.
    """
    check_choice("backend", requested, BACKENDS)
    cpu = torch.device("cpu")
    if requested == "auto":
        if device.type == "cuda":
            bf16 = torch.cuda.is_bf16_supported()
            return Choice("torch-bf16" if bf16 else "torch-fp32", device, "CUDA")
        passing = {
            name: check
            for name, check in meta.backend_checks.items()
            if name in BACKENDS and name != "auto" and check_passes(check)
        }
        # a runtime is imported only where a check would have it used (importing OpenVINO takes a while)
        if any(k.startswith("onnx-") for k in passing) and not _onnx_available():
            passing = {k: v for k, v in passing.items() if not k.startswith("onnx-")}
        if any(k.startswith("openvino-") for k in passing) and not _openvino_available():
            passing = {k: v for k, v in passing.items() if not k.startswith("openvino-")}
        if not cpu_has_fast_bf16():
            # a check's speed was measured where the check ran: a model folder checked on a CPU with
            # native bf16 and moved to one without would otherwise pick bf16, emulated here
            passing.pop("torch-bf16", None)
            passing.pop("torch-bf16-int8", None)
            passing.pop("openvino-bf16", None)
        if not cpu_has_vnni():  # int8 products without VNNI: slower, and their 16-bit sums saturate
            passing.pop("torch-bf16-int8", None)
            passing.pop("openvino-int8", None)  # and OpenVINO falls back to a generic int8 GEMM
        reference = "torch-bf16" if cpu_has_fast_bf16() else "torch-fp32"
        if not passing:
            return Choice(reference, cpu, "no backend has passed an agreement check for this model")
        # compress's race compares them in the same rounds (race_relative); older folders have docs/s only
        key = "race_relative" if all("race_relative" in c for c in passing.values()) else "docs_per_s"
        best = max(passing, key=lambda k: float(passing[k].get(key) or 0.0))
        check = passing[best]
        return Choice(
            best,
            cpu,
            f"passed the agreement check on {check['n']} documents "
            f"({check['label_agreement']:.2%} of labels agree with fp32)",
        )
    if requested == "torch-bf16-int8":
        warn_emulated_bf16(f"backend {requested}")
    if requested.startswith(("onnx-", "openvino-")) or requested in ("torch-int8", "torch-bf16-int8"):
        if device.type == "cuda" and device_given:
            raise ConfigError(f"backend {requested} runs on the CPU only; use --device cpu or a torch-* backend.")
        if requested.startswith("onnx-"):
            onnxruntime()
        if requested.startswith("openvino-"):
            from hrlm.inference.openvino_backend import openvino

            openvino()
        return Choice(requested, cpu, "requested")
    if requested == "torch-fp16" and device.type != "cuda":
        raise ConfigError("backend torch-fp16 needs a CUDA GPU; on a CPU use torch-fp32, torch-bf16 or an int8 one.")
    if requested == "torch-bf16" and device.type == "cpu":
        warn_emulated_bf16("backend torch-bf16")
    return Choice(requested, device, "requested")


def warn_emulated_bf16(what: str) -> bool:
    """Log a warning that ``what`` runs bf16 on a CPU that emulates it; whether it did."""
    if cpu_has_fast_bf16():
        return False
    log.warning(
        "%s on this CPU: it has neither AVX-512 BF16 nor AMX, so torch emulates bf16 matrix products, "
        "dozens of times slower than fp32; use fp32 (or auto, which picks fp32 here).",
        what,
    )
    return True


def build_backend(
    choice: Choice,
    model: HrlmModel,
    meta: ModelMeta,
    *,
    folder: Path | None,
    threads: int,
    scratch: list[Any],
) -> Backend:
    """The backend ``choice`` names, over ``model`` (which it does not modify)."""
    if choice.name == "torch-int8":
        int8 = quantize_torch_int8(model, int8_fp32_layers(meta))
        return TorchBackend(int8, choice.device, "fp32", name="torch-int8")
    if choice.name == "torch-bf16-int8":
        from hrlm.inference.mixed import MixedBackend, int8_layers, layer_names, load_maxima

        layers = int8_layers(meta)
        return MixedBackend(model, load_maxima(folder), layer_names(model) if layers is None else layers)
    if choice.name.startswith("onnx-"):
        path = onnx_file(choice.name, model, meta, folder, scratch)
        return OnnxBackend(path, [t.name for t in meta.tasks], threads=threads, name=choice.name, config=model.config)
    if choice.name.startswith("openvino-"):
        from hrlm.inference import openvino_backend

        return openvino_backend.build(choice.name, model, meta, folder=folder, threads=threads)
    return TorchBackend(model, choice.device, choice.name.split("-", 1)[1])
