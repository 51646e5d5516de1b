"""Train the bundled example model and write its test set.

A small CNN is trained in plain numpy on scikit-learn's ``load_digits`` (8x8 grey digits,
10 classes), exported through ONNX to ``digits.onnx`` / float ``digits.mnn``, and 16 held-out
images with the float MNN model's logits are written to ``testset/000 .. 015``.

    input [1,1,8,8] -> conv1 3x3 1->16 -> conv2 3x3 16->32 -> conv3 1x1 32->64 (each + ReLU)
    -> global average pool -> MatMul 64->10 -> logits

conv3 (32 input channels) and the final MatMul (64) are wide enough for block sizes 16/32(/64).
Run from the repository root: ``python examples/digits/make_example.py`` (deterministic).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from mnnq.testing import OnnxGraph, export_and_convert, reference_outputs, write_multi_testdir

HERE = Path(__file__).resolve().parent
SEED = 0
EPOCHS = 60
BATCH = 32
LR = 3e-3
TESTSET_SIZE = 16


def im2col3x3(x: np.ndarray) -> np.ndarray:
    """[N,C,H,W] -> [N*H*W, C*9] patches of a 3x3 'same' conv, columns ordered (c, kh, kw)
    like an ONNX weight [Cout, C, 3, 3] reshaped to [Cout, C*9]."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([xp[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=2)  # N,C,9,H,W
    return cols.transpose(0, 3, 4, 1, 2).reshape(n * h * w, c * 9)


def col2im3x3(cols: np.ndarray, shape) -> np.ndarray:
    """Adjoint of :func:`im2col3x3`: scatter-add patch gradients back to [N,C,H,W]."""
    n, c, h, w = shape
    cols = cols.reshape(n, h, w, c, 9).transpose(0, 3, 4, 1, 2)
    xp = np.zeros((n, c, h + 2, w + 2), cols.dtype)
    for k in range(9):
        i, j = divmod(k, 3)
        xp[:, :, i:i + h, j:j + w] += cols[:, :, k]
    return xp[:, :, 1:-1, 1:-1]


def init_params(rng: np.random.Generator) -> dict:
    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return {
        "w1": he((16, 9), 9), "b1": np.zeros(16, np.float32),
        "w2": he((32, 144), 144), "b2": np.zeros(32, np.float32),
        "w3": he((64, 32), 32), "b3": np.zeros(64, np.float32),
        "wf": he((64, 10), 64), "bf": np.zeros(10, np.float32),
    }


def forward(p: dict, x: np.ndarray):
    """Logits for x [N,1,8,8]; activations are rows (n, h, w) x channels. Returns the cache
    the backward pass needs."""
    n = x.shape[0]
    cols1 = im2col3x3(x)
    a1 = np.maximum(cols1 @ p["w1"].T + p["b1"], 0)                      # [N*64, 16]
    a1_nchw = a1.reshape(n, 8, 8, 16).transpose(0, 3, 1, 2)
    cols2 = im2col3x3(a1_nchw)
    a2 = np.maximum(cols2 @ p["w2"].T + p["b2"], 0)                      # [N*64, 32]
    a3 = np.maximum(a2 @ p["w3"].T + p["b3"], 0)                         # [N*64, 64]
    pooled = a3.reshape(n, 64, 64).mean(axis=1)                          # [N, 64]
    logits = pooled @ p["wf"] + p["bf"]
    return logits, (cols1, a1, a1_nchw.shape, cols2, a2, a3, pooled)


def backward(p: dict, cache, dlogits: np.ndarray) -> dict:
    cols1, a1, a1_shape, cols2, a2, a3, pooled = cache
    n = dlogits.shape[0]
    g = {"wf": pooled.T @ dlogits, "bf": dlogits.sum(0)}
    da3 = np.repeat((dlogits @ p["wf"].T)[:, None, :] / 64.0, 64, axis=1).reshape(-1, 64) * (a3 > 0)
    g["w3"], g["b3"] = da3.T @ a2, da3.sum(0)
    da2 = (da3 @ p["w3"]) * (a2 > 0)
    g["w2"], g["b2"] = da2.T @ cols2, da2.sum(0)
    da1_nchw = col2im3x3(da2 @ p["w2"], a1_shape)
    da1 = da1_nchw.transpose(0, 2, 3, 1).reshape(n * 64, 16) * (a1 > 0)
    g["w1"], g["b1"] = da1.T @ cols1, da1.sum(0)
    return g


def train(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> dict:
    """Adam on softmax cross-entropy with a cosine learning-rate decay."""
    p = init_params(rng)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(val) for k, val in p.items()}
    b1, b2, eps, step = 0.9, 0.999, 1e-8, 0
    steps_total = EPOCHS * int(np.ceil(len(x) / BATCH))
    for epoch in range(EPOCHS):
        order = rng.permutation(len(x))
        for start in range(0, len(x), BATCH):
            idx = order[start:start + BATCH]
            logits, cache = forward(p, x[idx])
            prob = np.exp(logits - logits.max(1, keepdims=True))
            prob /= prob.sum(1, keepdims=True)
            prob[np.arange(len(idx)), y[idx]] -= 1.0
            grads = backward(p, cache, prob / len(idx))
            step += 1
            lr = LR * 0.5 * (1 + np.cos(np.pi * step / steps_total))
            for k in p:
                m[k] = b1 * m[k] + (1 - b1) * grads[k]
                v[k] = b2 * v[k] + (1 - b2) * grads[k] ** 2
                mhat, vhat = m[k] / (1 - b1 ** step), v[k] / (1 - b2 ** step)
                p[k] -= (lr * mhat / (np.sqrt(vhat) + eps)).astype(np.float32)
        if epoch % 10 == 9:
            acc = (forward(p, x)[0].argmax(1) == y).mean()
            print(f"epoch {epoch + 1}: train accuracy {acc:.3f}")
    return p


def export(p: dict, directory: Path) -> Path:
    g = OnnxGraph()
    h = g.input("input", [1, 1, 8, 8])
    h = g.conv_relu(h, "conv1", 1, 16, 3, weight=p["w1"].reshape(16, 1, 3, 3), bias=p["b1"])
    h = g.conv_relu(h, "conv2", 16, 32, 3, weight=p["w2"].reshape(32, 16, 3, 3), bias=p["b2"])
    h = g.conv_relu(h, "conv3", 32, 64, 1, weight=p["w3"].reshape(64, 32, 1, 1), bias=p["b3"])
    h = g.dense(g.gap_flatten(h), "fc", 64, 10, weight=p["wf"], bias=p["bf"])
    g.node("Identity", [h], "logits")
    g.output("logits", [1, 10])
    return export_and_convert(g, directory, "digits")


def main() -> None:
    rng = np.random.default_rng(SEED)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]              # [N,1,8,8] in [0,1]
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.2, random_state=SEED, stratify=digits.target)

    started = time.time()
    params = train(x_train, y_train, rng)
    print(f"trained in {time.time() - started:.0f} s; numpy test accuracy "
          f"{(forward(params, x_test)[0].argmax(1) == y_test).mean():.3f}")

    mnn_path = export(params, HERE)
    logits = [reference_outputs(mnn_path, {"input": img[None]})["logits"] for img in x_test]
    accuracy = float(np.mean([out.argmax() == label for out, label in zip(logits, y_test)]))

    testset = HERE / "testset"
    shutil.rmtree(testset, ignore_errors=True)
    write_multi_testdir(testset, [({"input": x_test[i][None]}, {"logits": logits[i]})
                                  for i in range(TESTSET_SIZE)])
    print(f"wrote {mnn_path.name} and {TESTSET_SIZE} test dirs; "
          f"float MNN accuracy on {len(y_test)} held-out digits: {accuracy:.3f}")


if __name__ == "__main__":
    main()
