"""The OpenVINO backends: Intel's inference runtime for the CPU, in float32, bf16 or int8.

``openvino-fp32`` and ``openvino-bf16`` run the model through OpenVINO's CPU plugin, which fuses each
layer's attention (scores, softmax and context in one kernel) and picks its matrix-product kernels
for the CPU at hand. ``openvino-bf16`` computes in bf16 (linear layers, attention and layer norms)
where the CPU does so natively: AVX-512 BF16 or AMX.

``openvino-int8`` runs a copy quantized by NNCF, OpenVINO's post-training quantization library
(:func:`quantize_int8`): its transformer preset smooths the activations' outlier channels into the
weights (SmoothQuant), quantizes weights per output channel and activations with static scales read
from calibration text, and corrects the biases that rounding shifts. It needs calibration data, so
``hrlm compress --quantize int8 --data`` writes it into the model folder (:data:`INT8_XML`), with
the layers its agreement check kept in float32. Where the CPU computes bf16 natively, what stays
unquantized runs in bf16. Its int8 products are fast with VNNI or AMX; on a 2-core AVX2 EPYC
without them OpenVINO fell back to a generic int8 GEMM (``jit_gemm_I8``), 2.2 times slower than
float32, so ``auto`` uses it only on CPUs with VNNI (see :func:`hrlm.inference.backends.choose_backend`).
Batches are padded (the runtime has no packed layout); the Predictor sorts windows by length, so
padding stays small. Needs ``pip install 'hrlm[openvino]'``.

The model is converted with OpenVINO's PyTorch front end (a TorchScript trace with dynamic batch and
sequence axes) and kept as OpenVINO IR in the cache (``$HRLM_CACHE_DIR/openvino/<hash of the
weights>/``), so a later process reads it instead of converting again; a model that lives only in
memory is converted in memory.

Importing ``openvino`` sends a usage event to Intel's analytics service unless the user has opted
out (its ``openvino_telemetry`` package, on by default). hrlm imports it with that package
replaced by OpenVINO's own no-op stub: HR systems run where nothing should leave the machine,
usage data included.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hrlm._fs import atomic_dir
from hrlm.errors import ConfigError, ModelError
from hrlm.inference.backends import Backend, _weights_key, cache_dir, cpu_has_fast_bf16, cpu_has_vnni, traceable
from hrlm.modeling import HrlmModel, ModelMeta

log = logging.getLogger("hrlm")

PRECISIONS = ("fp32", "bf16", "int8")
# The int8 model of a folder (weights in model.int8.bin beside it), written by `hrlm compress --quantize int8 --data`
INT8_XML = "model.int8.xml"
INT8_BIN = "model.int8.bin"


def openvino() -> Any:
    """The ``openvino`` module without its usage telemetry, or a one-line error saying how to install it."""
    if "openvino" not in sys.modules:
        # None in sys.modules makes `import openvino_telemetry` fail, and OpenVINO then uses its stub
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    try:
        import openvino as ov
    except ImportError:
        raise ConfigError(
            "the openvino backends need OpenVINO, which is not installed; run `pip install 'hrlm[openvino]'` "
            "or choose --backend torch-fp32."
        ) from None
    return ov


def available() -> bool:
    """Whether OpenVINO is installed."""
    try:
        openvino()
    except ConfigError:
        return False
    return True


def nncf() -> Any:
    """The ``nncf`` module (OpenVINO's quantization library), without its usage telemetry, or a one-line error.

    NNCF reports usage through the same ``openvino_telemetry`` package as OpenVINO, and stays silent
    where that cannot be imported: :func:`openvino` sees to that before NNCF is imported.
    """
    openvino()
    try:
        import nncf as module
    except ImportError:
        raise ConfigError(
            "quantizing for openvino-int8 needs NNCF, which is not installed; run `pip install 'hrlm[openvino]'`."
        ) from None
    return module


def quantizer_available() -> bool:
    """Whether OpenVINO and NNCF are installed, so that ``openvino-int8`` can be made."""
    try:
        nncf()
    except ConfigError:
        return False
    return True


def convert(model: HrlmModel) -> Any:
    """An OpenVINO model of encoder and heads: inputs ``input_ids`` and ``attention_mask`` (int64, any
    batch and length), output ``i`` the logits of task ``i``. ``model`` is not modified."""
    ov = openvino()
    from openvino.frontend import FrontEndManager
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    wrapper, example = traceable(model)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's notes on Python values it treats as constants
            decoder = TorchScriptPythonDecoder(wrapper, example_input=example, shared_memory=False)
            front_end = FrontEndManager().load_by_framework("pytorch")
            loaded = front_end.load(decoder)
            for place in loaded.get_inputs():
                loaded.set_partial_shape(place, ov.PartialShape([-1, -1]))
                loaded.set_element_type(place, ov.Type.i64)
            converted = front_end.convert(loaded)
    except Exception as exc:  # tracing and conversion raise many kinds; the user needs one line and a way out
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(
            f"could not convert the {type(model.encoder).__name__} to OpenVINO ({reason}); use a torch-* backend."
        ) from exc
    return converted


def openvino_model(model: HrlmModel, meta: ModelMeta, folder: Path | None) -> Any:
    """The OpenVINO model of ``model``: read from the cache, else converted (and cached when the model has a folder)."""
    ov = openvino()
    if folder is None or not (folder / "model.safetensors").is_file():
        return convert(model)
    where = cache_dir() / "openvino" / f"{_weights_key(folder, meta)}-{ov.__version__.split('-')[0]}"
    xml = where / "model.xml"
    if xml.is_file():
        try:
            return _core().read_model(str(xml))
        except RuntimeError as exc:  # a damaged cache entry is converted again, not fatal
            log.warning("the cached OpenVINO model %s does not load (%s); converting again", where, exc)
    log.info("converting the model to OpenVINO once (cached in %s)", where)
    converted = convert(model)
    # overwrite: a damaged entry is replaced, and an entry another process wrote meanwhile is as good
    with atomic_dir(where, overwrite=True) as tmp:
        # weights as they are: OpenVINO's default would store them in fp16
        ov.save_model(converted, str(tmp / "model.xml"), compress_to_fp16=False)
    return converted


@functools.cache
def _core() -> Any:
    """One OpenVINO runtime core per process: it holds the plugins every model is read and compiled by."""
    return openvino().Core()


def quantize_int8(
    model: HrlmModel,
    batches: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    keep_fp32: Sequence[str] = (),
    overflow_fix: bool | None = None,
) -> Any:
    """An int8 OpenVINO model of ``model``, calibrated on ``batches`` of ``(input_ids, attention_mask)``.

    NNCF's post-training quantization with its transformer preset: SmoothQuant, int8 weights per
    output channel, activations with static scales from the calibration batches, fast bias correction.

    Args:
        model: the float32 model (not modified).
        batches: padded batches as the Predictor makes them, int64; a few hundred windows in all.
        keep_fp32: linear layers of the transformer blocks to leave in float32, named as
            :func:`hrlm.inference.backends.int8_linears` names them (``"3.output.dense"``).
        overflow_fix: quantize weights to 7 bits, for CPUs without VNNI whose int8 products sum pairs
            in 16 bits that can saturate; default: where this CPU has no VNNI.
    """
    quantizer = nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    if not batches:
        raise ConfigError("openvino-int8 needs calibration text; pass --data with held-out documents.")
    if overflow_fix is None:
        overflow_fix = not cpu_has_vnni()
    converted = convert(model)
    # OpenVINO names a linear layer's product after its module: "...layer.3.output.dense/aten::linear/MatMul"
    patterns = [rf".*\.{re.escape(name)}/aten::linear/MatMul" for name in keep_fp32]
    ops = [op.get_friendly_name() for op in converted.get_ordered_ops()]
    missing = [
        name
        for name, pattern in zip(keep_fp32, patterns, strict=True)
        if not any(re.fullmatch(pattern, op) for op in ops)
    ]
    if missing:
        raise ModelError(f"layers {missing} are not in the OpenVINO model of this encoder; use torch-int8.")
    data = [{"input_ids": ids, "attention_mask": mask} for ids, mask in batches]
    nncf_log = logging.getLogger("nncf")  # it logs every layer it leaves alone at INFO
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return quantizer.quantize(
                converted,
                quantizer.Dataset(data),
                model_type=quantizer.ModelType.TRANSFORMER,
                subset_size=len(data),
                ignored_scope=quantizer.IgnoredScope(patterns=patterns, validate=False) if patterns else None,
                advanced_parameters=AdvancedQuantizationParameters(
                    overflow_fix=OverflowFix.ENABLE if overflow_fix else OverflowFix.DISABLE
                ),
            )
    except Exception as exc:  # NNCF raises many kinds; the user needs one line and a way out
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(f"NNCF could not quantize the model for openvino-int8 ({reason}); use torch-int8.") from exc
    finally:
        nncf_log.setLevel(level)


def save_int8(quantized: Any, folder: Path) -> Path:
    """Write an int8 model from :func:`quantize_int8` into ``folder`` as :data:`INT8_XML` (and its ``.bin``)."""
    target = folder / INT8_XML
    openvino().save_model(quantized, str(target), compress_to_fp16=False)
    return target


def _hint(precision: str) -> str:
    """OpenVINO's inference precision for ``precision``; int8 models run what they do not quantize in bf16
    where that is native."""
    if precision == "int8":
        return "bf16" if cpu_has_fast_bf16() else "f32"
    return {"fp32": "f32", "bf16": "bf16"}[precision]


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"OpenVINO precision = {precision!r}: use one of {', '.join(PRECISIONS)}.")
    if precision == "bf16" and not cpu_has_fast_bf16():
        raise ConfigError(
            "backend openvino-bf16 needs a CPU with AVX-512 BF16 or AMX, which this one lacks; "
            "use openvino-fp32 (or auto)."
        )


class OpenVinoBackend(Backend):
    """A model compiled by OpenVINO's CPU plugin in ``precision`` on ``threads`` threads (padded batches).

    A batch at a time runs on every thread (one stream). Where the Predictor queues several batches and
    :attr:`streams` is above one (the calibration's choice, :mod:`hrlm.inference.calibrate`), they run
    that many at once, the threads shared among them: a second copy of the model compiled with
    OpenVINO's streams, fed by a queue of inference requests; a call of one batch is not queued. On a
    2-core Zen 4 two streams of one thread and one stream of two tied when each ran alone (openvino-int8,
    643 IMDB reviews at 256 tokens: 104.0-105.1 against 101.5-104.5 docs/s), but where other work shared
    the process the single stream's pace dropped and the two streams' held (95.0-105.0 against
    105.8-106.7 in rounds interleaved with other backends), which is why the calibration keeps streams
    on a tie.

    Safe to call from several threads: each thread gets its own inference request and queue.
    """

    def __init__(
        self, ov_model: Any, task_names: list[str], *, precision: str, threads: int, config: Any = None
    ) -> None:
        _check_precision(precision)
        self.ov_model = ov_model
        self.task_names = task_names
        self.precision = precision
        self.threads = threads
        self.compiled = self._compile(1)
        self.name = f"openvino-{precision}"
        self.config = config  # the model's, for the calibration's cache key
        self.streams = 1
        self._parallel: dict[int, Any] = {}  # streams -> the model compiled for them, made on first use
        self._lock = threading.Lock()
        self._local = threading.local()

    def _compile(self, streams: int) -> Any:
        properties = {
            "INFERENCE_PRECISION_HINT": _hint(self.precision),
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
            "NUM_STREAMS": streams,
        }
        return _core().compile_model(self.ov_model, "CPU", properties)

    def stream_choices(self) -> tuple[int, ...]:
        return (1, self.threads) if self.threads > 1 else (1,)

    @property
    def asynchronous(self) -> bool:
        return self.streams > 1

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        outputs = request.infer(_inputs(ids, mask), share_outputs=False)
        return {
            name: np.asarray(outputs[self.compiled.output(i)], dtype=np.float32)
            for i, name in enumerate(self.task_names)
        }

    def start(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
        """Queue a batch on the model compiled for :attr:`streams`; :meth:`gather` returns its logits."""
        queue = self._queue()
        slot: dict[str, Any] = {}
        queue.start_async(_inputs(ids, mask), userdata=slot)
        return slot

    def gather(self, pending: list[Any]) -> dict[str, np.ndarray]:
        self._queue().wait_all()
        if any(name not in slot for slot in pending for name in self.task_names):
            raise ModelError(f"{self.name}: OpenVINO returned no logits for a queued batch; use --backend torch-fp32.")
        return {name: np.concatenate([slot[name] for slot in pending]) for name in self.task_names}

    def _queue(self) -> Any:
        """This thread's queue of inference requests on the model compiled for :attr:`streams`."""
        streams = self.streams
        queues = getattr(self._local, "queues", None)
        if queues is None:
            queues = self._local.queues = {}
        if streams not in queues:
            with self._lock:
                if streams not in self._parallel:
                    self._parallel[streams] = self._compile(streams)
            queue = openvino().AsyncInferQueue(self._parallel[streams], streams)
            names = self.task_names

            def done(request: Any, slot: dict[str, Any]) -> None:
                # runs on OpenVINO's thread when the batch is done: copy the logits out of the request
                for i, name in enumerate(names):
                    slot[name] = np.array(request.get_output_tensor(i).data, dtype=np.float32)

            queue.set_callback(done)
            queues[streams] = queue
        return queues[streams]


def _inputs(ids: torch.Tensor, mask: torch.Tensor) -> list[np.ndarray]:
    return [np.ascontiguousarray(ids.numpy(), dtype=np.int64), np.ascontiguousarray(mask.numpy(), dtype=np.int64)]


def int8_model(folder: Path | None) -> Any:
    """The folder's int8 model (:data:`INT8_XML`), or a one-line error saying how to make it."""
    xml = None if folder is None else folder / INT8_XML
    if xml is None or not xml.is_file():
        where = "this model (it has no folder)" if folder is None else str(folder)
        raise ConfigError(
            f"backend openvino-int8 needs {INT8_XML} in {where}; run `hrlm compress MODEL --out NEW "
            "--quantize int8 --data HELD_OUT.csv` with OpenVINO installed, or choose openvino-fp32."
        )
    try:
        return _core().read_model(str(xml))
    except RuntimeError as exc:
        reason = (str(exc).strip().splitlines() or ["unreadable"])[0][:200]
        raise ModelError(f"{xml} does not load ({reason}); run `hrlm compress --quantize int8 --data` again.") from exc


def build(name: str, model: HrlmModel, meta: ModelMeta, *, folder: Path | None, threads: int) -> OpenVinoBackend:
    """The backend ``name`` (``openvino-fp32``, ``-bf16`` or ``-int8``) over ``model``, which it does not modify."""
    precision = name.split("-", 1)[1]
    _check_precision(precision)  # before a conversion that would be wasted
    return OpenVinoBackend(
        int8_model(folder) if precision == "int8" else openvino_model(model, meta, folder),
        [t.name for t in meta.tasks],
        precision=precision,
        threads=threads,
        config=model.config,
    )
