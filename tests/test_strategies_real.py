"""The default search on real converted models: its plan, re-measured from the written file,
meets the budget with a smaller file than auto_quant.py's order (select-bits, select-block,
memory-mode, skip-layers) at the same rate."""
from common import DIGITS_MODEL, DIGITS_TESTSET, measured
from mnnq.testing import run_cli

RATE = 0.05


def written_sizes(model, testset, tmp_path, pm):
    """``{strategy: size of the written model}`` for both orders, each re-measured within RATE."""
    sizes = {}
    for strategy in ("sensitivity", "auto_quant"):
        out = tmp_path / f"{strategy}.mnn"
        code, stdout, stderr = run_cli(["auto-quant", "--model", model, "--quant_model", out, "--test_dir", testset,
                                        "--rate", str(RATE), "--strategy", strategy])
        assert code == 0, stdout + stderr
        errors = measured(out, testset, pm)
        assert errors["max_rel"] <= RATE, (strategy, errors)
        sizes[strategy] = out.stat().st_size
    return sizes


def test_sensitivity_plan_is_smaller_than_auto_quant_order_on_digits(tmp_path, pm):
    sizes = written_sizes(DIGITS_MODEL, DIGITS_TESTSET, tmp_path, pm)
    assert sizes["sensitivity"] < sizes["auto_quant"], sizes


def test_sensitivity_plan_is_smaller_than_auto_quant_order_on_the_tiny_convnet(tiny_convnet, tmp_path, pm):
    """Another family: 3x3, depthwise and fully connected layers."""
    sizes = written_sizes(tiny_convnet.model, tiny_convnet.test_dir, tmp_path, pm)
    assert sizes["sensitivity"] < sizes["auto_quant"], sizes
