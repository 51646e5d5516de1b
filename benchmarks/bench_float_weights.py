"""How much of a weight-quantized model stays float, and what ``--fp16-float-weights`` saves.

    python benchmarks/bench_float_weights.py [--steps 40] [--rate 0.05] [--json OUT]
    python benchmarks/bench_float_weights.py --model-path model.onnx --test-dir testset/

Default model: a CRNN-style head exported from PyTorch with its LSTM unrolled (``nn.LSTMCell``
called once per time step, as some OCR models ship): conv 1->32 3x3, ``steps`` LSTM cells of 256
units over 256 features, Linear 256->64; seeded random weights, nothing downloaded (needs
``pip install torch==2.13.0 onnx``). Its test set: 8 seeded random inputs, references from
onnxruntime (``mnnq testdir make``). For each setting of ``--fp16-float-weights`` (0, 1)
auto-quant runs with default flags; reported: size ratio to the float file, the measured error,
and the report's headline on the weights left float.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def export_unrolled_lstm(path: Path, steps: int) -> Path:
    """The CRNN head above as ONNX (input ``x`` [1,1,8,steps], output ``y`` [steps,1,64])."""
    import torch

    torch.manual_seed(0)

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 32, 3, padding=1)
            self.cell = torch.nn.LSTMCell(32 * 8, 256)
            self.fc = torch.nn.Linear(256, 64)

        def forward(self, x):
            seq = torch.relu(self.conv(x)).reshape(1, 256, -1).permute(2, 0, 1)
            h, c, outs = torch.zeros(1, 256), torch.zeros(1, 256), []
            for t in range(seq.shape[0]):
                h, c = self.cell(seq[t], (h, c))
                outs.append(h)
            return self.fc(torch.stack(outs))

    torch.onnx.export(Head().eval(), (torch.randn(1, 1, 8, steps),), str(path), input_names=["x"],
                      output_names=["y"], dynamo=False, opset_version=17)
    return path


def make_testset(model: Path, out: Path, steps: int) -> Path:
    x = np.random.default_rng(1).random((8, 1, 1, 8, steps)).astype(np.float32)
    np.save(out.with_suffix(".npy"), x)
    subprocess.run([sys.executable, "-m", "mnnq", "testdir", "make", "--model", str(model), "--out", str(out),
                    "--npy", str(out.with_suffix(".npy"))], check=True, capture_output=True)
    return out


def run(model: Path, test_dir: Path, rate: float, work: Path) -> list:
    import mnnq
    from mnnq.inputs.sources import resolve_model

    float_size = resolve_model(model).stat().st_size
    rows = []
    for fp16 in (False, True):
        r = mnnq.auto_quant(model, work / f"q{int(fp16)}.mnn", test_dir, rate=rate, fp16_float_weights=fp16)
        rows.append({"fp16_float_weights": fp16, "met": r.passed, r.metric: r.error,
                     "size_ratio": round((work / f"q{int(fp16)}.mnn").stat().st_size / float_size, 4),
                     "float_share": r.weights["float_share"], "headline": r.weights["headline"]})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--model-path", type=Path, help="any model auto-quant takes, instead of the LSTM head")
    ap.add_argument("--test-dir", type=Path, help="its test set (with --model-path)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-float-weights-") as work:
        work = Path(work)
        if args.model_path:
            model, test_dir = args.model_path, args.test_dir
        else:
            model = export_unrolled_lstm(work / "lstm_unrolled.onnx", args.steps)
            test_dir = make_testset(model, work / "testset", args.steps)
        rows = run(model, test_dir, args.rate, work)
    for row in rows:
        print(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
