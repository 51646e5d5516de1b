"""auto-quant with default flags on real pretrained models taken from PyPI wheels.

Slow group (`python -m pytest -m slow`): the models are built on first use by
benchmarks/pretrained.py from packages listed in benchmarks/README.md.
"""
import json

import pytest

from benchmarks.pretrained import prepare
from common import measured
from mnnq.cli import main

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mtcnn_onet"])
def test_default_flags_meet_the_rate_on_the_written_model(tmp_path, name, pm):
    model = prepare(name)
    q = tmp_path / "q.mnn"
    report = tmp_path / "report.json"
    code = main(["auto-quant", "--model", str(model.float_mnn), "--quant_model", str(q),
                 "--test_dir", str(model.testset), "--report-json", str(report)])
    assert code == 0
    data = json.loads(report.read_text())
    errors = measured(q, model.testset, pm, data["memory_mode"])
    assert errors["max_rel"] <= 0.05
    assert data["size_after_bytes"] < 0.5 * data["size_before_bytes"]
