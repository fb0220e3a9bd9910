"""The OpenVINO backends: Intel's inference runtime for the CPU, in float32 or bf16.

``openvino-fp32`` and ``openvino-bf16`` run the model through OpenVINO's CPU plugin, which fuses each
layer's attention (scores, softmax and context in one kernel) and picks its matrix-product kernels
for the CPU at hand. ``openvino-bf16`` computes in bf16 (linear layers, attention and layer norms)
where the CPU does so natively: AVX-512 BF16 or AMX.
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
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hrlm._fs import atomic_dir
from hrlm.errors import ConfigError, ModelError
from hrlm.inference.backends import Backend, _weights_key, cache_dir, cpu_has_fast_bf16, traceable
from hrlm.modeling import HrlmModel, ModelMeta

log = logging.getLogger("hrlm")

# OpenVINO's names for the precisions
_HINTS = {"fp32": "f32", "bf16": "bf16"}


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


def _check_precision(precision: str) -> None:
    if precision not in _HINTS:
        raise ConfigError(f"OpenVINO precision = {precision!r}: use one of {sorted(_HINTS)}.")
    if precision == "bf16" and not cpu_has_fast_bf16():
        raise ConfigError(
            "backend openvino-bf16 needs a CPU with AVX-512 BF16 or AMX, which this one lacks; "
            "use openvino-fp32 (or auto)."
        )


class OpenVinoBackend(Backend):
    """A model compiled by OpenVINO's CPU plugin in ``precision`` on ``threads`` threads (padded batches).

    Safe to call from several threads: each thread gets its own inference request.
    """

    def __init__(
        self, ov_model: Any, task_names: list[str], *, precision: str, threads: int, config: Any = None
    ) -> None:
        _check_precision(precision)
        properties = {
            "INFERENCE_PRECISION_HINT": _HINTS[precision],
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        self.compiled = _core().compile_model(ov_model, "CPU", properties)
        self.task_names = task_names
        self.precision = precision
        self.threads = threads
        self.name = f"openvino-{precision}"
        self.config = config  # the model's, for the calibration's cache key
        self._local = threading.local()

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        ids_np = np.ascontiguousarray(ids.numpy(), dtype=np.int64)
        mask_np = np.ascontiguousarray(mask.numpy(), dtype=np.int64)
        outputs = request.infer([ids_np, mask_np], share_outputs=False)
        return {
            name: np.asarray(outputs[self.compiled.output(i)], dtype=np.float32)
            for i, name in enumerate(self.task_names)
        }


def build(name: str, model: HrlmModel, meta: ModelMeta, *, folder: Path | None, threads: int) -> OpenVinoBackend:
    """The backend ``name`` (``openvino-fp32`` or ``openvino-bf16``) over ``model``, which it does not modify."""
    precision = name.split("-", 1)[1]
    _check_precision(precision)  # before a conversion that would be wasted
    return OpenVinoBackend(
        openvino_model(model, meta, folder),
        [t.name for t in meta.tasks],
        precision=precision,
        threads=threads,
        config=model.config,
    )
