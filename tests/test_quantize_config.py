"""quantize's config: quantized.out's keys and defaults, YAML, and bad configs (exit 2, one line
naming the key, nothing written)."""
import json
from pathlib import Path

import numpy as np
import pytest

from mnnq.cli import main
from mnnq.quantize.config import parse_config
from common import DIGITS_DIR



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Sequence samples of the digits model, an image folder, an empty folder, a model with RGB input."""
    import MNN.cv as cv
    import MNN.expr as F
    from mnnq.testing.models import build_convnet, write_multi_testdir

    root = tmp_path_factory.mktemp("qcfg")
    rng = np.random.default_rng(0)
    write_multi_testdir(root / "seq", [({"input": rng.random((1, 1, 8, 8)).astype(np.float32)},
                                        {"logits": np.zeros(10, np.float32)}) for _ in range(4)])
    (root / "images").mkdir()
    for i in range(3):
        img = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
        cv.imwrite(str(root / "images" / f"{i}.png"), F.const(img.reshape(-1), [10, 12, 3], F.NHWC, F.uint8))
    (root / "empty").mkdir()
    (root / "junk").mkdir()
    (root / "junk" / "notes.txt").write_text("not an image\n")
    convnet = build_convnet(root)
    return {"root": root, "seq": root / "seq", "images": root / "images", "empty": root / "empty",
            "junk": root / "junk", "convnet": convnet}


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    """rich wraps at the terminal width; a wide one keeps each message on its line."""
    monkeypatch.setenv("COLUMNS", "400")


def run_cli(args, capsys):
    rc = main(["quantize", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


SEQ = {"input_type": "sequence"}
BAD = [
    ("unknown feature method", {**SEQ, "feature_quantize_method": "KLD"}, "feature_quantize_method"),
    ("missing path", {"input_type": "sequence", "path": None}, "'path'"),
    ("path not found", {**SEQ, "path": "/nonexistent/calib"}, "'path'"),
    ("image without width", {"path": "@images", "height": 8}, "'width'"),
    ("empty image folder", {"path": "@empty", "width": 8, "height": 8, "format": "GRAY"}, "'path'"),
    ("no readable image", {"path": "@junk", "width": 8, "height": 8, "format": "GRAY"}, "'path'"),
    ("feature clamp out of range", {**SEQ, "feature_clamp_value": 200}, "feature_clamp_value"),
    ("weight clamp out of range", {**SEQ, "weight_clamp_value": 0}, "weight_clamp_value"),
    ("quant_bits as a string", {**SEQ, "quant_bits": "8"}, "quant_bits"),
    ("quant_bits too large", {**SEQ, "quant_bits": 9}, "quant_bits"),
    ("weight method without channel scales", {**SEQ, "weight_quantize_method": "hqq"}, "weight_quantize_method"),
    ("misspelt key", {**SEQ, "feature_quantise_method": "KL"}, "feature_quantise_method"),
    ("unknown format", {"path": "@images", "width": 8, "height": 8, "format": "YUV"}, "'format'"),
    ("mean not a list", {"path": "@images", "width": 8, "height": 8, "mean": "0"}, "'mean'"),
    ("mean of 2 for RGB", {"path": "@images", "width": 8, "height": 8, "format": "RGB", "mean": [0, 0]},
     "'mean': format RGB has 3 channel(s), so 'mean' needs 3 values"),
    ("normal of 3 for BGRA", {"path": "@images", "width": 8, "height": 8, "format": "BGRA", "normal": [1, 1, 1]},
     "'normal': format BGRA has 4 channel(s), so 'normal' needs 4 values"),
    ("mean of 1 for the default BGR", {"path": "@images", "width": 8, "height": 8, "mean": [127.5]},
     "format BGR (the default) has 3 channel(s)"),
    ("debug not a bool", {**SEQ, "debug": "yes"}, "'debug'"),
    ("batch_size zero", {**SEQ, "batch_size": 0}, "batch_size"),
    ("skip names not a list", {**SEQ, "skip_quant_op_names": "conv1"}, "skip_quant_op_names"),
    ("inputs entry without name", {**SEQ, "inputs": [{"shape": [1, 1, 8, 8]}]}, "inputs[0]"),
    ("sequence folder without samples", {"path": "@empty", "input_type": "sequence"}, "'path'"),
    ("unknown input_type", {"path": "@seq", "input_type": "video"}, "input_type"),
]


@pytest.mark.parametrize("what,config,key", BAD, ids=[b[0] for b in BAD])
def test_bad_config_exits_2_with_one_line_naming_the_key(what, config, key, data, tmp_path, capsys):
    config = {"path": str(data["seq"]), **config}
    for k, v in list(config.items()):
        if v is None:
            del config[k]
        elif isinstance(v, str) and v.startswith("@"):
            config[k] = str(data[v[1:]])
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(config))
    out = tmp_path / "int8.mnn"
    report = tmp_path / "report.json"
    rc, stdout, err = run_cli([DIGITS_DIR / "digits.mnn", out, cfg, "--report-json", report], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (stdout, err)
    assert len(lines) == 1 and lines[0].startswith("mnnq: error:"), err
    assert key in lines[0], lines[0]
    assert not out.exists() and not Path(str(out) + ".json").exists() and not report.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json"]


def test_format_must_match_the_model_input_channels(data, tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"path": str(data["images"]), "width": 16, "height": 16, "format": "GRAY"}))
    rc, _, err = run_cli([data["convnet"], tmp_path / "q.mnn", cfg], capsys)
    assert rc == 2 and "'format'" in err and "RGB or BGR" in err
    assert not (tmp_path / "q.mnn").exists()


@pytest.mark.parametrize("text,needle", [("path: [unclosed", "not valid YAML"), ("- a\n- b\n", "mapping")])
def test_malformed_yaml(text, needle, data, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    rc, _, err = run_cli([DIGITS_DIR / "digits.mnn", tmp_path / "q.mnn", cfg], capsys)
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_bad_flags_and_paths(data, tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"path": str(data["seq"]), "input_type": "sequence"}))
    rc, _, err = run_cli([DIGITS_DIR / "digits.mnn", tmp_path / "q.mnn", cfg, "--metric", "nope"], capsys)
    assert rc == 2 and "--metric" in err
    rc, _, err = run_cli([DIGITS_DIR / "digits.mnn", DIGITS_DIR / "digits.mnn", cfg], capsys)
    assert rc == 2 and "input file" in err
    rc, _, err = run_cli([tmp_path / "missing.mnn", tmp_path / "q.mnn", cfg], capsys)
    assert rc == 2 and "missing.mnn" in err
    assert not (tmp_path / "q.mnn").exists()


def test_defaults_follow_quantized_out(data):
    cfg = parse_config({"path": str(data["images"]), "width": 8, "height": 8})
    assert (cfg.input_type, cfg.format, cfg.mean, cfg.normal) == ("image", "BGR", [0.0] * 4, [1.0] * 4)
    assert (cfg.center_crop_h, cfg.center_crop_w, cfg.used_sample_num) == (1.0, 1.0, 0)
    assert (cfg.feature_quantize_method, cfg.weight_quantize_method) == ("KL", "MAX_ABS")
    assert (cfg.quant_bits, cfg.feature_clamp_value, cfg.weight_clamp_value, cfg.batch_size) == (8, 127, 127, 32)
    assert (cfg.skip_quant_op_names, cfg.debug, cfg.inputs) == ([], False, [])
    assert parse_config({"path": str(data["seq"]), "used_image_num": 3, "input_type": "sequence"}).used_sample_num == 3
    assert parse_config({"path": str(data["seq"]), "used_sample_num": 2, "input_type": "sequence"}).used_sample_num == 2
    low = parse_config({"path": str(data["seq"]), "input_type": "sequence", "quant_bits": 4})
    assert low.weight_clamp == 7
    gray = parse_config({"path": str(data["images"]), "width": 8, "height": 8, "format": "GRAY", "mean": [1.0]})
    assert gray.mean == [1.0, 0.0, 0.0, 0.0]
    # quantized.out keeps mean/normal in a float[4]: a 4th value for a 3-channel format is ignored there too
    four = parse_config({"path": str(data["images"]), "width": 8, "height": 8, "normal": [0.5] * 4})
    assert four.normal == [0.5] * 4


def test_yaml_config_and_unknown_key_warning(data, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"path: {data['seq']}\ninput_type: sequence\nfeature_quantize_method: ADMM\n"
                   "my_comment: hello\n")
    out = tmp_path / "q.mnn"
    rc, stdout, _ = run_cli([DIGITS_DIR / "digits.mnn", out, cfg], capsys)
    assert rc == 0 and out.is_file()
    assert "unknown key 'my_comment'" in stdout
    params = json.loads(Path(str(out) + ".json").read_text())
    assert len(params["algo"][0]["quantParams"]["layer"]) == 4
