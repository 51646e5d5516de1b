"""Paths and helpers shared by the test modules (import as ``from common import ...``)."""
from pathlib import Path

from mnnq.measure import compare
from mnnq.mnn_backend.runtime import LoadedModel
from mnnq.quantize.writer import quantized_layers
from mnnq.testset import load_testset

ROOT = Path(__file__).resolve().parents[1]
DIGITS_DIR = ROOT / "examples" / "digits"          # the bundled example
DIGITS_MODEL = DIGITS_DIR / "digits.mnn"            # its float model
DIGITS_TESTSET = DIGITS_DIR / "testset"             # its 16-sample test set


def measured(model, testset_dir, pm, memory_mode="normal"):
    """Every metric's error of ``model`` on ``testset_dir``, from a run of the file itself
    (max_rel is the metric that must count an output)."""
    ts = load_testset(testset_dir)
    loaded = LoadedModel(model, ts.input_names, ts.output_names, memory_mode=memory_mode)
    return compare(ts, [loaded.run(s.inputs) for s in ts.samples], pm.metrics(), "max_rel").errors


def int8_layers(path):
    """The names of the conv ops of ``path`` that run INT8 (quantized, no float weight), sorted."""
    return sorted(quantized_layers(path))


def prepared_digits(work):
    """``(prepared, timings)``: auto-quant's preparation of the bundled example (HQQ, max_rel,
    the simulation) in the new folder ``work``."""
    from mnnq.autoquant.prepare import prepare
    from mnnq.autoquant.timing import Timings
    from mnnq.plugin_manager import get_plugin_manager

    pm = get_plugin_manager()
    hqq = pm.weight_method("hqq")
    timings = Timings()
    Path(work).mkdir(parents=True)
    return prepare(DIGITS_MODEL, load_testset(DIGITS_TESTSET), hqq, hqq, pm.metrics(), "max_rel", "fast",
                   Path(work), timings), timings
