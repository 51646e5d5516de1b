"""A float model whose conv weights can be swapped between runs without re-converting.

Two backends, both fed the weights in the converter's quantization view (see
:meth:`mnnq.mnn_backend.inventory.ConvOp.converter_shape`: ``[oc, kernelSize / kxky, kY, kX]`` in
stored order, which for convolutions is the usual ``[out, in_per_group, kh, kw]``):

``mode="patch"`` (default)
    The float weights are overwritten in an in-memory copy of the ``.mnn`` file (their byte
    offsets come from :func:`mnnq.mnn_backend.inventory.read_conv_ops`); the first ``run`` after
    a change writes that copy into ``workdir`` and loads it like any model file. Every conv kind
    works and the kernels are exactly those of the converter's written model (outputs
    bit-identical). Cost per weight change: writing the file, loading it and packing the
    weights on the first run; later runs go at native speed. A run given its sample's name
    starts at the first op whose weights changed, from that sample's float activations there
    (:mod:`mnnq.mnn_backend.suffix`; outputs bit-identical), when a whole forward is slow
    enough for that to pay (``CUT_MIN_FORWARD_S``).

``mode="module"`` / ``mode="module-fast"``
    ``MNN.nn.load_module(inputs, outputs, True)`` over the vars of ``F.load_as_dict`` extracts
    every Convolution / ConvolutionDepthwise into a module whose ``parameters`` are its (bias,
    weight) vars; ``load_parameters`` swaps them. MNN does not extract Deconvolution ops: each
    one is rebuilt as a weight-as-input deconvolution (``_Deconv(weight, bias, x, ...)`` with the
    op's strides, pads, output padding, dilation, group and fused ReLU, checked against the
    original on a random input) whose weight and bias are trainable vars. Parameters carry no
    names, so they are mapped to layers by content: each must equal, bit for bit, the weight the
    file stores for one conv op (ties between identical weights broken by position); a layer
    without exactly one matching parameter raises :class:`SwapMappingError`; parameters that are
    no conv weight or bias (a BatchNorm kept by a ``--forTraining`` model) are passed back
    unchanged. ``"module"`` runs the module in inference mode: every forward rebuilds each conv
    with its current weights as constants -- bit-identical outputs, but all weights are re-packed
    on every run. ``"module-fast"`` runs it in training mode (weight-as-input convolutions): as
    fast as the file model, outputs within ~1e-5 relative of it.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mnnq.errors import BadInput, MnnqError, NativeFailure
from mnnq.layers import Layer
from mnnq.mnn_backend.converter import convert
from mnnq.mnn_backend.inventory import ConvOp, read_conv_ops
from mnnq.mnn_backend.runtime import _mnn, input_vars, read_output


# Runs start from a cut (see run) only when a whole forward takes at least this long: loading
# a suffix module costs about a millisecond more than reloading the model, which the forward
# saved on a model of a few milliseconds does not repay (measured on the MTCNN nets and
# silero-vad: 1.3-2.1x slower with cuts; 0.54-0.68x on a YOLOv8n and the PP-OCR detector and
# recogniser).
CUT_MIN_FORWARD_S = 0.005


class SwapMappingError(MnnqError):
    """The in-process model's parameters cannot be matched to the layers one-to-one."""


def _key(arr: np.ndarray) -> Tuple[Tuple[int, ...], bytes]:
    a = np.ascontiguousarray(arr, dtype=np.float32)
    return tuple(int(d) for d in a.shape), a.tobytes()


def _param_shape(op: ConvOp) -> Tuple[int, ...]:
    """The shape MNN gives the op's weight parameter."""
    c = op.common
    kx, ky = int(c["kernelX"]), int(c["kernelY"])
    if op.is_deconv:
        # stored ONNX-style [ic, oc/g, kh, kw]
        oc = int(c["outputCount"])
        group = oc if op.is_depthwise else max(int(c["group"]), 1)
        count = op.weight_count()
        return (count // (oc // group * kx * ky), oc // group, ky, kx)
    oc = int(c["outputCount"])
    count = op.weight_count()
    return (oc, count // max(oc * kx * ky, 1), ky, kx)


MODES = ("patch", "module", "module-fast")


class _NoTimings:
    """Stands in for a timings object when the caller keeps none."""

    @contextlib.contextmanager
    def cost(self, kind: str):
        yield


def _model_file(float_mnn: Path, workdir: Path, prepare: str) -> Path:
    """The file the swappable model uses (see ``SwappableModel.load``'s ``prepare``)."""
    if prepare == "convert":
        model_path = workdir / "swappable.mnn"
        convert(float_mnn, model_path, "MNN", what="preparing the in-process model")
        return model_path
    if prepare == "none":
        return float_mnn
    raise ValueError(f"prepare must be 'convert' or 'none', not {prepare!r}")


def _checked_op(layer: Layer, op: Optional[ConvOp], mode: str, file_name: str) -> ConvOp:
    """``op`` when it is a conv op of the file with float weights stored inline that matches
    ``layer``; else :class:`SwapMappingError` saying why the layer cannot be simulated."""
    if op is None:
        where = file_name if mode == "patch" else f"the main graph of {file_name}"  # patch reads subgraphs too
        raise SwapMappingError(f"layer {layer.name} is not a conv op of {where}; it cannot be simulated")
    if op.weight is None or op.weight_offset < 0:
        why = "external" if op.external else ("quantized" if op.quant is not None else "missing")
        raise SwapMappingError(f"layer {layer.name}: its weights are {why} in {file_name}")
    if len(op.inputs) > 1 and mode != "patch":
        raise SwapMappingError(f"layer {layer.name} takes extra inputs; use mode='patch'")
    if layer.out_channels and int(op.common["outputCount"]) != layer.out_channels:
        raise SwapMappingError(f"layer {layer.name}: {op.common['outputCount']} output channels in the file, "
                               f"{layer.out_channels} in the layer list")
    if layer.weight_shape and tuple(layer.weight_shape) != op.converter_shape():
        raise SwapMappingError(f"layer {layer.name}: weight shape {tuple(layer.weight_shape)} differs from the "
                               f"file's {op.converter_shape()}")
    return op


class SwappableModel:
    """A float model whose conv weights can be replaced between runs.

    ``weights`` holds each layer's float weights in the converter view; ``set_weights`` swaps
    some layers (the others keep their current values), ``reset`` restores the float weights
    and ``run`` has the contract of :meth:`mnnq.mnn_backend.runtime.LoadedModel.run`.
    ``ops`` maps each layer name to its :class:`ConvOp` (kind, common params, stored layout).
    """

    def __init__(self) -> None:  # use SwappableModel.load
        self.path: Path = Path()
        self.mode = "patch"
        self.input_names: List[str] = []
        self.output_names: List[str] = []
        self.weights: Dict[str, np.ndarray] = {}
        self.ops: Dict[str, ConvOp] = {}
        # indexes of module parameters that are no conv weight or bias (kept as they are)
        self.other_parameters: List[int] = []
        self._workdir: Path = Path()
        # patch backend
        self._base: bytes = b""
        self._buffer: Optional[bytearray] = None
        self._dirty = False
        self._loaded = None
        self._generation = 0
        # per swap file: layers changed since that file was last written (None: write it whole)
        self._stale: List[Optional[set]] = [None, None]
        self._threads = 1
        self._file: Optional[Path] = None   # the swap file holding the current weights
        # runs from a cut (mnnq.mnn_backend.suffix): layers whose weights are not the float ones,
        # the graph's cuts and float activations (None: not read yet; False: unusable), the
        # suffix module loaded last ``(position, module)``
        self._changed: set = set()
        self._cuts = None
        self._activations = None
        self._suffix: Optional[Tuple[int, object]] = None
        self._cut_pays: Optional[bool] = None  # whether a whole forward is slow enough (CUT_MIN_FORWARD_S)
        self._whole_forwards: List[float] = []  # the first whole forwards' seconds, to decide it
        # module backend
        self._module = None
        self._input_like: List[object] = []
        self._params: List[object] = []
        self._param_shapes: List[Tuple[int, ...]] = []
        self._weight_index: Dict[str, int] = {}
        self._timings = _NoTimings()

    # ------------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        float_mnn: Path,
        layers: Sequence[Layer],
        input_names: Sequence[str],
        output_names: Sequence[str],
        workdir: Path,
        prepare: str = "convert",
        mode: str = "patch",
        threads: int = 1,
        ops: Optional[Sequence[ConvOp]] = None,
        timings=None,
    ) -> "SwappableModel":
        """Load ``float_mnn`` for swapping the weights of ``layers``.

        ``prepare`` says which file is used: ``"convert"`` (default) re-converts ``float_mnn``
        MNN -> MNN into ``workdir`` with no quantization, i.e. exactly the graph and float
        weights the weight-quantizing conversion starts from; ``"none"`` uses ``float_mnn`` as
        is. ``mode`` picks the backend (see the module docstring). ``ops``: the file's conv ops
        when the caller already read them (``read_conv_ops`` of that same file, with
        ``prepare="none"``). ``timings``: an object with ``cost(kind)`` context managers
        (:class:`mnnq.autoquant.timing.Timings`) charged with writing (``swap``) and loading
        (``load``) the swapped file.
        Raises :class:`SwapMappingError` when a layer is missing, unsupported or not matched
        one-to-one, :class:`NativeFailure` when MNN fails.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        model_path = _model_file(Path(float_mnn), workdir, prepare)
        if ops is not None and prepare != "none":
            raise ValueError("ops are those of the file used: pass them with prepare='none'")
        file_ops = list(ops) if ops is not None else read_conv_ops(model_path, subgraphs=(mode == "patch"))
        by_name = {op.key: op for op in file_ops}

        self = cls()
        self.path = model_path
        self.mode = mode
        if timings is not None:
            self._timings = timings
        self._workdir = workdir
        self._threads = threads
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        for layer in layers:
            op = _checked_op(layer, by_name.get(layer.name), mode, model_path.name)
            self.ops[layer.name] = op
            w = np.array(op.weight, dtype=np.float32).reshape(op.converter_shape())
            w.setflags(write=False)
            self.weights[layer.name] = w

        if mode == "patch":
            self._base = model_path.read_bytes()
            self._buffer = bytearray(self._base)
            self._dirty = True
        else:
            self._build_module(file_ops, layers, fast=(mode == "module-fast"))
        return self

    # ------------------------------------------------------------------------------------
    # module backend

    def _build_module(self, file_ops: Sequence[ConvOp], layers: Sequence[Layer], fast: bool) -> None:
        F, nn = _mnn()
        try:
            d = F.load_as_dict(str(self.path))
        except Exception as exc:  # noqa: BLE001 - MNN raises bare Exceptions
            raise NativeFailure(f"MNN could not load {self.path}: {exc}") from None
        missing = [n for n in [*self.input_names, *self.output_names] if n not in d]
        if missing:
            raise BadInput(f"{self.path.name} has no tensor(s) {', '.join(missing)}")
        for op in self.ops.values():
            if op.is_deconv:
                if op.common.get("hasOutputShape"):
                    raise SwapMappingError(
                        f"layer {op.name}: deconvolution with an output-shape input cannot be rebuilt "
                        "in-process; use mode='patch'")
                self._rebuild_deconv(F, nn, d, op)
        inputs = [d[n] for n in self.input_names]
        outputs = [d[n] for n in self.output_names]
        module = nn.load_module(inputs, outputs, True)
        if module is None:
            raise NativeFailure(f"MNN could not build an in-process module from {self.path}")
        # Inference mode: each extracted conv is rebuilt per forward with its current weights as
        # constants, i.e. the kernels the file model uses. Training mode runs weight-as-input
        # convolutions: faster here, ~1e-5 relative off.
        module.train(bool(fast))
        self._module = module
        self._input_like = inputs
        self._map_parameters(file_ops, layers)

    @staticmethod
    def _rebuild_deconv(F, nn, d: Dict[str, object], op: ConvOp) -> None:
        """Replace the deconvolution ``op`` in the graph ``d`` by a weight-as-input one whose
        weight and bias are trainable vars, and check it computes what the original does."""
        if not op.inputs or not op.outputs or op.inputs[0] not in d or op.outputs[0] not in d:
            raise SwapMappingError(f"deconvolution {op.name}: its tensors are not in the graph")
        c = op.common
        x = d[op.inputs[0]]
        out = d[op.outputs[0]]
        shape = list(_param_shape(op))
        weight = F.const(np.ascontiguousarray(op.weight.reshape(shape)), shape, F.NCHW)
        weight.fix_as_trainable()
        channels = int(op.bias.size)
        bias = F.const(np.ascontiguousarray(op.bias), [channels], F.NCHW)
        bias.fix_as_trainable()
        # MNN pads are [y_begin, x_begin, y_end, x_end]; outPads [y, x] extend the end side
        if op.pads:
            pads = [int(v) for v in op.pads]
            if len(pads) == 2:
                pads = [pads[1], pads[0], pads[1], pads[0]]
        else:
            pads = [int(c["padY"]), int(c["padX"]), int(c["padY"]), int(c["padX"])]
        extra = [0, 0]
        if op.out_pads:
            out_pads = [int(v) for v in op.out_pads] + [0] * (2 - len(op.out_pads))
            for axis in (0, 1):
                end = pads[2 + axis] - out_pads[axis]
                pads[2 + axis] = max(end, 0)
                extra[axis] = max(-end, 0)
        pad_mode = {0: F.CAFFE, 1: F.VALID, 2: F.SAME}.get(int(c["padMode"]), F.CAFFE)
        if op.out_pads and pad_mode != F.CAFFE:
            raise SwapMappingError(f"deconvolution {op.name}: output padding with pad mode "
                                   f"{int(c['padMode'])} cannot be rebuilt in-process")
        group = int(c["outputCount"]) if op.is_depthwise else max(int(c["group"]), 1)
        x4 = x if x.data_format == F.NC4HW4 else F.convert(x, F.NC4HW4)
        stride = [int(c["strideX"]), int(c["strideY"])]
        dilate = [int(c["dilateX"]), int(c["dilateY"])]
        if extra == [0, 0]:
            new = F._F.conv2d_transpose(x4, weight, bias, stride, pads, dilate, group, pad_mode)
        else:
            # the output reaches past the full transposed conv: those rows/columns get the bias only
            zero = F.const(np.zeros(channels, np.float32), [channels], F.NCHW)
            new = F._F.conv2d_transpose(x4, weight, zero, stride, pads, dilate, group, pad_mode)
            new = F.convert(new, F.NCHW)
            widths = np.array([[0, 0], [0, 0], [0, extra[0]], [0, extra[1]]], dtype=np.int32)
            new = F.pad(new, F.const(widths, [4, 2], F.NCHW, F.int))
            new = new + F.reshape(bias, [1, channels, 1, 1])
            new = F.convert(new, F.NC4HW4)
        if c.get("relu6"):
            new = F.relu6(new)
        elif c.get("relu"):
            new = F.relu(new)
        if out.data_format != new.data_format:
            new = F.convert(new, out.data_format)
        SwappableModel._check_same(F, nn, op, x, out, new)
        out.replace(new)

    @staticmethod
    def _check_same(F, nn, op: ConvOp, x, old, new) -> None:
        """Run the original and the rebuilt op on one random input (when the input shape is
        static) and refuse the rebuild if they disagree."""
        shape = list(x.shape) if x.shape is not None else []
        if not shape or any(int(s) <= 0 for s in shape):
            return
        rng = np.random.default_rng(0)
        data = rng.standard_normal(shape).astype(np.float32)

        def run(out_var):
            module = nn.load_module([x], [out_var], False)
            feed = F.const(data, shape, F.NCHW)
            if x.data_format != F.NCHW:
                feed = F.convert(feed, x.data_format)
            res = module.forward([feed])
            res = res[0] if isinstance(res, (list, tuple)) else res
            return read_output(F, res)

        try:
            want, got = run(old), run(new)
        except Exception as exc:  # noqa: BLE001
            raise SwapMappingError(f"deconvolution {op.name}: the in-process rebuild failed ({exc})") from None
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        if want.shape != got.shape or float(np.max(np.abs(want - got), initial=0.0)) > 1e-4 * max(scale, 1e-6):
            raise SwapMappingError(
                f"deconvolution {op.name}: the in-process rebuild does not reproduce the op "
                f"(shapes {want.shape} vs {got.shape}); it cannot be simulated")

    def _map_parameters(self, file_ops: Sequence[ConvOp], layers: Sequence[Layer]) -> None:
        params = list(self._module.parameters)
        values = [np.array(p.read(), dtype=np.float32, copy=True) for p in params]
        weight_keys: Dict[Tuple, List[str]] = {}
        bias_keys: Dict[Tuple, List[str]] = {}
        for op in file_ops:
            if op.weight is None or op.bias is None:
                continue
            weight_keys.setdefault(_key(op.weight.reshape(_param_shape(op))), []).append(op.key)
            bias_keys.setdefault(_key(op.bias), []).append(op.key)
        owner: Dict[int, str] = {}
        taken = set()
        for i, value in enumerate(values):
            key = _key(value)
            names = [n for n in weight_keys.get(key, []) if n not in taken]
            if names:
                # parameters come in reverse execution order: take the last candidate
                owner[i] = names[-1]
                taken.add(names[-1])
                continue
            if key not in bias_keys:
                # e.g. a BatchNorm kept by a --forTraining model: passed back unchanged
                self.other_parameters.append(i)
        self._weight_index = {name: i for i, name in owner.items()}
        self._params = params
        self._param_shapes = [tuple(int(d) for d in v.shape) for v in values]
        unmapped = [layer.name for layer in layers if layer.name not in self._weight_index]
        if unmapped:
            raise SwapMappingError(
                f"{len(unmapped)} layer(s) have no in-process parameter (e.g. {unmapped[0]}); "
                "cannot simulate them")
        for layer in layers:
            op = self.ops[layer.name]
            have = values[self._weight_index[layer.name]].reshape(op.converter_shape())
            if not np.array_equal(have, self.weights[layer.name]):
                raise SwapMappingError(f"layer {layer.name}: its in-process parameter differs from the file")

    # ------------------------------------------------------------------------------------
    def set_weights(self, updates: Mapping[str, np.ndarray]) -> None:
        """Swap in new weights (converter view, same shape as ``weights[name]``) for the given
        layers; the other layers keep their current weights."""
        if not updates:
            return
        checked = {}
        for name, arr in updates.items():
            if name not in self.weights:
                raise BadInput(f"no swappable layer named {name}")
            arr = np.asarray(arr, dtype=np.float32)
            if arr.shape != self.weights[name].shape:
                raise BadInput(f"layer {name}: new weights have shape {arr.shape}, "
                               f"expected {self.weights[name].shape}")
            checked[name] = arr
        if self.mode == "patch":
            for name, arr in checked.items():
                if arr is self.weights[name]:
                    self._changed.discard(name)
                else:
                    self._changed.add(name)
                op = self.ops[name]
                data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
                self._buffer[op.weight_offset: op.weight_offset + len(data)] = data
                for stale in self._stale:
                    if stale is not None:
                        stale.add(name)
            self._dirty = True
            return
        F, _ = _mnn()
        params = list(self._params)
        for name, arr in checked.items():
            idx = self._weight_index[name]
            shape = list(self._param_shapes[idx])
            params[idx] = F.const(np.ascontiguousarray(arr.reshape(shape)), shape, F.NCHW)
        self._load_params(params)

    def reset(self) -> None:
        """Restore every layer's float weights."""
        if self.mode == "patch":
            self._buffer = bytearray(self._base)
            self._stale = [None, None]
            self._changed = set()
            self._dirty = True
            return
        self.set_weights(self.weights)

    def _load_params(self, params: List[object]) -> None:
        ok = self._module.load_parameters(params)
        if ok is False:
            raise NativeFailure("MNN refused the swapped parameters (size or layout mismatch)")
        self._params = list(self._module.parameters)

    def _current_file(self) -> Path:
        """The swap file holding the current weights (written when they changed)."""
        if self._dirty or self._file is None:
            # alternate between two files so a model being replaced never reads a half-written
            # one; a file already written is brought up to date in place, only the weights of
            # the layers changed since (rewriting a whole large model per trial cost more than
            # running it)
            self._generation += 1
            which = self._generation % 2
            path = self._workdir / f"swapped_{which}.mnn"
            self._loaded = None
            self._suffix = None
            with self._timings.cost("swap"):
                self._write_swap_file(path, which)
            self._file = path
            self._dirty = False
        return self._file

    def _patched_model(self):
        from mnnq.mnn_backend.runtime import LoadedModel

        path = self._current_file()
        if self._loaded is None:
            with self._timings.cost("load"):
                self._loaded = LoadedModel(path, self.input_names, self.output_names, threads=self._threads,
                                           quick_init=True)
        return self._loaded

    def _first_changed(self) -> Optional[int]:
        """The main-graph position of the first op whose weights changed (None: none changed,
        or one is in a subgraph)."""
        if not self._changed or any(self.ops[n].graph for n in self._changed):
            return None
        return min(self.ops[n].index for n in self._changed)

    def _run_from_cut(self, inputs: Mapping[str, np.ndarray], sample: str) -> Optional[Dict[str, np.ndarray]]:
        """The outputs of a run starting at the first changed op, or None when no cut applies.
        Should MNN refuse a cut, the model runs whole from then on."""
        try:
            return self._cut_run(inputs, sample)
        except (MnnqError, SystemError, RuntimeError, TypeError, ValueError, AttributeError):
            self._cuts, self._suffix, self._activations = False, None, None
            return None

    def _cut_run(self, inputs: Mapping[str, np.ndarray], sample: str) -> Optional[Dict[str, np.ndarray]]:
        from mnnq.mnn_backend.runtime import LoadedModel
        from mnnq.mnn_backend.suffix import FloatActivations, GraphCuts

        position = self._first_changed()
        if not position or self._cuts is False:
            return None
        if self._cuts is None:
            self._cuts = GraphCuts.read(self.path, self.input_names, self.output_names) or False
            if self._cuts is False:
                return None
            positions = [op.index for op in self.ops.values() if not op.graph]
            self._activations = FloatActivations(self.path, self._cuts, positions, self._threads)
        frontier = self._cuts.frontier(position)
        values = self._activations.values(sample, inputs) if frontier is not None else None
        if values is None:
            return None
        path = self._current_file()
        if self._suffix is None or self._suffix[0] != position:
            with self._timings.cost("load"):
                suffix = LoadedModel(path, list(frontier), self.output_names, threads=self._threads, quick_init=True)
            self._suffix = (position, suffix)
        F, _ = _mnn()
        outs = self._suffix[1].forward_vars([values[name] for name in frontier])
        return {name: read_output(F, v) for name, v in zip(self.output_names, outs)}

    def _write_swap_file(self, path: Path, which: int) -> None:
        """Bring swap file ``which`` up to date: whole when new, else the changed layers only."""
        stale = self._stale[which]
        if stale is None or not path.is_file():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(self._buffer)
            tmp.replace(path)
        else:
            with open(path, "r+b") as fh:
                for name in sorted(stale, key=lambda n: self.ops[n].weight_offset):
                    start = self.ops[name].weight_offset
                    fh.seek(start)
                    fh.write(self._buffer[start: start + 4 * self.weights[name].size])
        self._stale[which] = set()

    def run(self, inputs: Mapping[str, np.ndarray], sample: Optional[str] = None) -> Dict[str, np.ndarray]:
        """The outputs for ``inputs``. ``sample`` names them (the same name, the same inputs):
        in patch mode a run whose changed layers all come after some cut of the main graph then
        starts there, from that sample's cached float activations."""
        if self.mode == "patch":
            outs = self._run_from_cut(inputs, sample) if sample is not None and self._cut_pays else None
            if outs is None:
                model = self._patched_model()
                started = time.perf_counter()
                outs = model.run(inputs)
                if self._cut_pays is None:  # the faster of two (a first forward also packs weights)
                    self._whole_forwards.append(time.perf_counter() - started)
                    if len(self._whole_forwards) == 2:
                        self._cut_pays = min(self._whole_forwards) >= CUT_MIN_FORWARD_S
            if len(outs) != len(self.output_names):
                raise NativeFailure(f"MNN failed to run the swapped copy of {self.path.name}")
            return outs
        F, _ = _mnn()
        outs = self._module.forward(input_vars(F, inputs, self.input_names, self._input_like))
        if outs is not None and not isinstance(outs, (list, tuple)):
            outs = [outs]
        if not outs or len(outs) != len(self.output_names):
            raise NativeFailure(f"MNN failed to run the in-process copy of {self.path.name}")
        try:
            return {name: read_output(F, v) for name, v in zip(self.output_names, outs)}
        except Exception as exc:  # noqa: BLE001 - MNN raises SystemError/TypeError on failures
            raise NativeFailure(f"MNN failed to run the in-process copy of {self.path.name}: {exc}") from None
