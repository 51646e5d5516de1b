"""Run the float model in-process and stream per-conv activations through feature observers.

The layers the converter can write as INT8 are the single-input Convolution /
ConvolutionDepthwise ops with float weights in the file (``FullQuantAndCoding``); each needs
params for its input and output tensor. Those tensors are requested as extra outputs of
``MNN.nn.load_module_from_file`` on the float model.

The INT8 model cannot be read that way: MNN 3.6.1 returns an INT8 intermediate output from
memory it has already released (the first bytes are overwritten, results change with the
set of requested outputs). So per-layer measurements use a *probe* copy of the float model
(``build_probe_model``): every tensor ``t`` gets a float consumer ``t * 1`` named
``t__mnnq_probe`` that is a real graph output; converting the probe copy with the same params
gives an INT8 model whose probes read the dequantized INT8 activations. The converter keeps
the probes and the INT8 outputs are the same as the real model's (checked in the tests).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mnnq.contracts import ActivationObserver
from mnnq.errors import BadInput, NativeFailure, PluginError
from mnnq.mnn_backend.inventory import OP_CONVOLUTION, OP_CONVOLUTION_DEPTHWISE, ConvOp, read_conv_ops
from mnnq.mnn_backend.runtime import LoadedModel, model_io_names
from mnnq.quantize.inputs import Samples

PROBE_SUFFIX = "__mnnq_probe"


@dataclass(frozen=True)
class QuantLayer:
    """A conv the converter can write as INT8. ``weight`` is ``[out, in/group, kh, kw]``."""

    name: str
    kind: str
    input: str
    output: str
    weight: np.ndarray = field(repr=False, compare=False)
    op: Optional[ConvOp] = field(default=None, repr=False, compare=False)   # as read from the file

    @property
    def shape_text(self) -> str:
        return "x".join(str(d) for d in self.weight.shape)


def find_layers(model: Path, skip: Iterable[str] = ()) -> Tuple[List[QuantLayer], List[Tuple[str, str]]]:
    """``(layers, kept_float)``: the full-INT8 candidates of ``model`` in file order, and
    ``(op name, reason)`` for every other conv-like op (and each skipped one)."""
    skip = set(skip)
    layers: List[QuantLayer] = []
    kept: List[Tuple[str, str]] = []
    for op in read_conv_ops(Path(model)):
        if op.op_type not in (OP_CONVOLUTION, OP_CONVOLUTION_DEPTHWISE):
            kept.append((op.name, f"{op.type_name} has no full-INT8 path in the converter"))
            continue
        if len(op.inputs) != 1 or not op.outputs:
            kept.append((op.name, "its weights are a graph input, not stored in the op"))
            continue
        if op.weight is None:
            kept.append((op.name, "weights are external or already quantized"))
            continue
        c = op.common
        oc, group = int(c["outputCount"]), max(int(c["group"]), 1)
        icg = int(c["inputCount"]) // group
        kh, kw = int(c["kernelY"]), int(c["kernelX"])
        if oc <= 0 or icg <= 0 or oc * icg * kh * kw != op.weight.size:
            kept.append((op.name, f"weight count {op.weight.size} does not match its declared shape"))
            continue
        if op.name in skip:
            kept.append((op.name, "listed in skip_quant_op_names"))
            continue
        layers.append(QuantLayer(op.name, op.kind, op.inputs[0], op.outputs[0],
                                 op.weight.reshape(oc, icg, kh, kw).copy(), op))
    return layers, kept


def layer_tensors(layers: Sequence[QuantLayer]) -> List[str]:
    """Input and output tensors of ``layers``, each once, in graph order."""
    seen: Dict[str, None] = {}
    for layer in layers:
        seen.setdefault(layer.input)
        seen.setdefault(layer.output)
    return list(seen)


class TensorRunner:
    """The float model with ``tensors`` as extra outputs: ``run(feeds) -> (outputs, tensors)``."""

    def __init__(self, model: Path, input_names: Sequence[str], output_names: Sequence[str],
                 tensors: Sequence[str] = (), suffix: str = ""):
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.tensors = list(tensors)
        self.suffix = suffix
        self._fetch = [t + suffix for t in self.tensors if suffix or t not in self.input_names]
        extra = [n for n in self._fetch if n not in self.output_names]
        self.model = LoadedModel(Path(model), self.input_names, self.output_names + extra)

    def run(self, feeds: Mapping[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
        got = self.model.run(feeds)
        missing = [n for n in self.output_names + self._fetch if n not in got]
        if missing:
            shapes = ", ".join(f"{k} {list(np.shape(v))}" for k, v in feeds.items())
            raise BadInput(f"{self.model.path.name} did not run on a sample with inputs {shapes} (no output "
                           f"'{missing[0]}'); check the sample shapes against the model's inputs")
        outputs = {n: got[n] for n in self.output_names}
        tensors = {}
        for t in self.tensors:
            key = t + self.suffix
            tensors[t] = got[key] if key in got else np.asarray(feeds[t], dtype=np.float32)
        return outputs, tensors


def checked_observer(observer: object) -> ActivationObserver:
    """``observer`` if it has the observer contract's methods, else a PluginError naming it."""
    if not isinstance(observer, ActivationObserver):
        raise PluginError(f"feature method observer {type(observer).__name__} lacks update/end_batch/finish; "
                          "subclass mnnq.plugin.Observer")
    return observer


def calibrate(model: Path, input_names: Sequence[str], output_names: Sequence[str], tensors: Sequence[str],
              samples: Samples, make_observer: Callable[[], ActivationObserver], batch_size: int,
              on_sample: Optional[Callable[[int], None]] = None,
              on_outputs: Optional[Callable[[int, Dict[str, np.ndarray], Dict[str, np.ndarray]], None]] = None,
              on_tensors: Optional[Callable[[Dict[str, np.ndarray]], None]] = None,
              fetch: Sequence[str] = ()) -> Dict[str, ActivationObserver]:
    """Stream every sample through the float model; one observer per tensor gets
    ``update(x)`` per sample and ``end_batch()`` every ``batch_size`` samples. ``on_outputs(i,
    feeds, outputs)`` gets each sample's model outputs (the measurements reuse them),
    ``on_tensors(tensors)`` its calibrated tensors. Returns the observers. Memory does not
    depend on the number of samples."""
    runner = TensorRunner(model, input_names, output_names, list(tensors) + [t for t in fetch if t not in tensors])
    observers = {t: checked_observer(make_observer()) for t in tensors}
    for i in range(len(samples)):
        feeds = samples.load(i)
        outputs, values = runner.run(feeds)
        for t, obs in observers.items():
            obs.update(values[t])
        if on_tensors:
            on_tensors(values)
        if (i + 1) % batch_size == 0:
            for obs in observers.values():
                obs.end_batch()
        if on_outputs:
            on_outputs(i, feeds, outputs)
        if on_sample:
            on_sample(i)
    return observers


def build_probe_model(model: Path, tensors: Sequence[str], dst: Path) -> Path:
    """Save a copy of float ``model`` where each tensor ``t`` also feeds a float op ``t * 1``
    named ``t + PROBE_SUFFIX`` that is a graph output (see the module docstring)."""
    import MNN.expr as F

    try:
        variables = F.load_as_dict(str(model))
        outputs = [variables[n] for n in model_io_names(model)[1]]
    except Exception as exc:  # MNN raises plain exceptions for graphs it cannot rebuild
        raise NativeFailure(f"could not rebuild {model} to probe its layers ({exc})") from None
    probes = []
    for t in tensors:
        if t not in variables:
            raise NativeFailure(f"tensor '{t}' of {model} is not reachable from its outputs; cannot probe it")
        probe = variables[t] * F.scalar(1.0)
        probe.name = t + PROBE_SUFFIX
        probes.append(probe)
    F.save(outputs + probes, str(dst))
    return Path(dst)


# ------------------------------------------------------------------------------- measuring

def overflow_ratio(x: np.ndarray, scale: float, zero: int, clamp: int) -> float:
    """Fraction of ``x`` clipped by INT8 params: ``round(x / s) + z`` beyond ``[-C, C]``.
    (quantized.out counts values landing exactly on the bound, which flags every zero of a
    tensor with zero point ``-C``.)"""
    if scale <= 0.0:
        return 0.0
    q = np.floor(np.asarray(x, dtype=np.float64) / scale + 0.5) + zero
    return float(np.mean(np.abs(q) > clamp))
