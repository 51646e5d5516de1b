"""The built-in full-INT8 feature and weight methods against plain ports of MNN's definitions."""
import math

import numpy as np
import pytest

from mnnq.quantize.stats import AbsHistogram
from mnnq.weightquant import c_round as round_half_away

C = 127


def observer(pm, name):
    return pm.feature_method(name).make_observer()


# ------------------------------------------------------------------------------------ KL

def reference_threshold(d, target=128):
    """TensorStatistic::_computeThreshold, line by line (slow; small histograms only)."""
    d = [float(v) for v in d]
    nbins = len(d)
    best, min_kl = target, 10000.0
    after = sum(d[target:])
    for i in range(target, nbins):
        p = d[:i]
        p[i - 1] += after
        after -= d[i] if i < nbins else 0.0
        q = [0.0] * target
        e = [0.0] * i
        width = i / target
        for j in range(target):
            start, end = j * width, j * width + width
            left, right = math.ceil(start), math.floor(end)
            if left > start:
                q[j] += (left - start) * d[left - 1]
            if right < end:
                q[j] += (end - right) * d[right]
            q[j] += sum(d[left:right])
        for j in range(target):
            start, end = j * width, j * width + width
            left, right = math.ceil(start), math.floor(end)
            count = (left - start if left > start else 0.0) + (end - right if right < end else 0.0) + (right - left)
            value = q[j] / count
            if left > start:
                e[left - 1] += value * (left - start)
            if right < end:
                e[right] += value * (end - right)
            for k in range(left, right):
                e[k] += value
        kl = sum(a * math.log(a / b) for a, b in zip(p, e))
        if kl < min_kl:
            min_kl, best = kl, i
    return best


@pytest.mark.parametrize("nbins,power,seed", [(256, 1, 0), (384, 2, 1), (512, 3, 2), (320, 0.5, 3)])
def test_kl_threshold_matches_mnn_loop(nbins, power, seed):
    from mnnq_plugins.feature_kl import kl_threshold

    x = np.abs(np.random.default_rng(seed).standard_normal(20000)) ** power
    hist, _ = np.histogram(x, bins=nbins, range=(0, x.max()))
    d = hist + 1e-7
    d = d / d.sum()
    assert kl_threshold(d) == reference_threshold(d)


def test_kl_streamed_equals_two_pass(pm):
    """Batches with a growing range give the scale MNN's two passes would (within a bin or two)."""
    from mnnq_plugins.feature_kl import kl_threshold

    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((1, 8, 16, 16)) * s for s in (0.5, 1.0, 3.0, 2.0, 7.0)]
    obs = observer(pm, "KL")
    for b in batches:
        obs.update(b)
    scale, zero = obs.finish(8, C)
    allx = np.abs(np.concatenate([b.ravel() for b in batches]))
    top = allx.max()
    hist, _ = np.histogram(allx[allx > 1e-6], bins=2048, range=(0, top))
    d = hist + 1e-7
    exact = (kl_threshold(d / d.sum()) + 0.5) / (2048 / top) / C
    assert zero == 0
    assert scale == pytest.approx(exact, rel=3e-3)


def covered(params):
    scale, zero = params
    return (-C - zero) * scale, (C - zero) * scale


def test_kl_small_tensors_use_the_max(pm):
    obs = observer(pm, "KL")
    x = np.random.default_rng(1).standard_normal((1, 16, 8, 8))   # 64 positions < 100
    obs.update(x)
    top = 2047.5 / 2048 * np.abs(x).max()
    scale, zero = obs.finish(8, C)
    lo, hi = covered((scale, zero))
    assert hi == pytest.approx(top, abs=scale) and lo == pytest.approx(max(x.min(), -top), abs=scale)


def test_kl_spends_the_codes_on_the_side_the_tensor_uses(pm):
    """Same |x| histogram (so the same threshold T): a symmetric tensor gets [-T, T] at zero
    point 0, a ReLU output [0, T] at zero point -C, a SiLU-like one (negatives above -0.3)
    [min x, T]."""
    rng = np.random.default_rng(2)
    mag = np.abs(rng.standard_normal((1, 4, 16, 16)))
    signs = np.where(rng.random(mag.shape) < 0.5, -1.0, 1.0)
    symmetric, relu, silu = observer(pm, "KL"), observer(pm, "KL"), observer(pm, "KL")
    symmetric.update(mag * signs)
    relu.update(mag)
    silu_like = np.where(signs < 0, -np.minimum(mag, 0.3), mag)
    silu.update(silu_like)
    s_sym, z_sym = symmetric.finish(8, C)
    threshold = s_sym * C
    assert z_sym == 0
    s_relu, z_relu = relu.finish(8, C)
    assert z_relu == -C and s_relu * 2 * C == pytest.approx(threshold, rel=0.05)
    lo, hi = covered(silu.finish(8, C))
    assert lo == pytest.approx(silu_like.min(), abs=2 * (hi - lo) / (2 * C))
    assert hi <= threshold * 1.05 and hi - lo < 0.6 * 2 * threshold


# ------------------------------------------------------------------------------------ ADMM

def admm_direct(x, clamp, steps=300):
    alpha = np.abs(x).max() / (clamp * 2.5)
    for _ in range(steps):
        q = np.clip(round_half_away(x / alpha), -clamp, clamp)
        alpha = (q * x).sum() / (q * q).sum()
    return alpha


def test_admm_feature_matches_the_direct_fit(pm):
    rng = np.random.default_rng(3)
    batches = [rng.standard_normal((1, 8, 12, 12)) * (1 + i) for i in range(4)]
    obs = observer(pm, "ADMM")
    for b in batches:
        obs.update(b)
    scale, zero = obs.finish(8, C)
    assert zero == 0
    assert scale == pytest.approx(admm_direct(np.concatenate([b.ravel() for b in batches]), C), rel=2e-3)


def test_admm_feature_fits_non_negative_tensors_on_the_asymmetric_grid(pm):
    x = np.maximum(np.random.default_rng(4).standard_normal((1, 8, 12, 12)), 0)
    obs = observer(pm, "ADMM")
    obs.update(x)
    scale, zero = obs.finish(8, C)
    assert zero == -C
    assert scale == pytest.approx(admm_direct(x.ravel(), 2 * C), rel=2e-3)


# ------------------------------------------------------------------------------------ EMA

def test_ema_follows_mnn_moving_average(pm):
    rng = np.random.default_rng(5)
    obs = observer(pm, "EMA")
    ranges = []
    for batch in range(3):
        lo, hi = 0.0, 0.0
        for _ in range(2):                                  # two samples per batch
            x = rng.standard_normal((1, 4, 6, 6)) * (batch + 1) + 0.5
            obs.update(x)
            lo, hi = min(lo, x.min()), max(hi, x.max())
        obs.end_batch()
        s = (hi - lo) / (2 * C)
        z = round_half_away(-lo / s - C)
        ranges.append((min(0, (-C - z) * s), max(0, (C - z) * s)))
    run_lo, run_hi = ranges[0]
    for lo, hi in ranges[1:]:
        run_lo, run_hi = 0.99 * run_lo + 0.01 * lo, 0.99 * run_hi + 0.01 * hi
    scale, zero = obs.finish(8, C)
    assert scale == pytest.approx((run_hi - run_lo) / (2 * C))
    assert zero == round_half_away(-run_lo / scale - C)


def test_ema_without_batches_uses_everything_seen(pm):
    obs = observer(pm, "EMA")
    obs.update(np.array([[-1.0, 3.0]]))
    obs.update(np.array([[0.5, 2.0]]))
    scale, zero = obs.finish(8, C)
    assert scale == pytest.approx(4.0 / 254, rel=1e-2)
    assert -C <= zero <= C


# ------------------------------------------------------------------------------------ weights

def test_max_abs_channel_scales(pm):
    w = np.random.default_rng(6).standard_normal((5, 3, 3, 3)).astype(np.float32)
    method = pm.weight_method("MAX_ABS")
    np.testing.assert_allclose(method.channel_scales(w, 8, C), np.abs(w).reshape(5, -1).max(1) / C, rtol=1e-6)


def test_admm_weight_scales_equal_mnn_1000_rounds(pm):
    w = np.random.default_rng(7).standard_normal((6, 4, 3, 3))
    alpha = np.abs(w).reshape(6, -1).max(1) / (C * 1.25)
    flat = w.reshape(6, -1)
    for _ in range(1000):
        q = np.clip(round_half_away(flat / (alpha[:, None] + 1e-9)), -C, C)
        alpha = (flat * q).sum(1) / ((q * q).sum(1) + 1e-9)
    got = pm.weight_method("ADMM").channel_scales(w, 8, C)
    np.testing.assert_allclose(got, alpha, rtol=1e-6)


def test_int8_weight_methods_simulate_the_converter_weight_only(pm, tmp_path):
    """Used for weight-only quantization, both qdq what the converter writes (symmetric)."""
    from mnnq.mnn_backend.converter import params_template, weight_quantize
    from mnnq.mnn_backend.inventory import dequantize_like_runtime, read_conv_ops
    from mnnq.testing.models import build_convnet

    model = build_convnet(tmp_path)
    template = params_template(model)
    for layer in template["algo"][0]["quantParams"]["layer"]:
        layer["weight"][0].update({"bits": 6, "asymmetric": False, "blockSize": 0})
    template.pop("forGuide", None)
    out = tmp_path / "w6.mnn"
    weight_quantize(model, out, template, hqq=False, asymmetric=False)
    floats = {op.name: op for op in read_conv_ops(model)}
    for op in read_conv_ops(out):
        w = floats[op.name].weight.reshape(op.converter_shape())
        for name in ("MAX_ABS", "ADMM"):
            method = pm.weight_method(name)
            sim = method.quantize_dequantize(w, 6, -1)
            np.testing.assert_allclose(sim.ravel(), dequantize_like_runtime(op), rtol=1e-5, atol=1e-7)
            assert not method.underflows(w, 6, -1)
    assert pm.weight_method("MAX_ABS").underflows(np.full((2, 4, 1, 1), 1e-5, np.float32), 8, -1)


def test_abs_histogram_growth_keeps_counts_and_sums():
    h = AbsHistogram(bins=64)
    rng = np.random.default_rng(8)
    data = [rng.standard_normal(500) * s for s in (1, 10, 100)]
    for d in data:
        h.update(d)
    allx = np.abs(np.concatenate(data))
    assert h.total == allx.size
    assert h.sums.sum() == pytest.approx(allx.sum())
    assert h.max == pytest.approx(allx.max())
    assert h.width * h.bins >= allx.max()
    assert h.resample(16).sum() == pytest.approx(allx.size)


# ------------------------------------------------------------------------------------ MSE

def fake_quant_mse(x, params):
    scale, zero = params
    q = np.clip(np.floor(x / scale + 0.5) + zero, -C, C)
    return float(np.mean(((q - zero) * scale - x) ** 2))


def test_mse_clips_a_long_tail_and_beats_the_full_range(pm):
    """Laplace(0, b=1): the MSE-optimal 8-bit clipping point is about 9.89 b (Banner et al.,
    "Post-training 4-bit quantization ...", 2019), well inside the largest values (12..14)."""
    x = np.random.default_rng(11).laplace(0.0, 1.0, (1, 16, 128, 128))
    obs = observer(pm, "MSE")
    for part in np.split(x, 4, axis=1):                             # streamed in 4 batches
        obs.update(part)
    params = obs.finish(8, C)
    lo, hi = covered(params)
    assert hi == pytest.approx(9.89, abs=1.0) and -lo == pytest.approx(9.89, abs=1.0)   # Banner et al.: 9.89 b
    full_scale = (x.max() - x.min()) / (2 * C)
    full = (full_scale, int(round(-C - x.min() / full_scale)))
    assert fake_quant_mse(x, params) < 0.8 * fake_quant_mse(x, full)


def test_mse_keeps_the_range_of_a_uniform_tensor_and_the_side_of_a_relu(pm):
    rng = np.random.default_rng(12)
    uniform = rng.uniform(-3.0, 5.0, (1, 4, 32, 32))
    obs = observer(pm, "MSE")
    obs.update(uniform)
    lo, hi = covered(obs.finish(8, C))
    assert lo == pytest.approx(-3.0, abs=0.1) and hi == pytest.approx(5.0, abs=0.1)
    relu = observer(pm, "MSE")
    relu.update(np.maximum(rng.standard_normal((1, 4, 32, 32)), 0))
    assert relu.finish(8, C)[1] == -C


def test_mse_all_zero_tensor_asks_the_host_for_a_safe_scale(pm):
    obs = observer(pm, "MSE")
    obs.update(np.zeros((1, 2, 4, 4)))
    assert obs.finish(8, C) == (0.0, 0)
