"""Which entries of a compression params file the converter reads: the first QUANTIZE algo
(type QUANTIZE by default) with quantParams. mnnq.params.template_layers is the one rule for
that; here it is pinned to the converter's real behaviour."""
import copy
import json

from mnnq.mnn_backend.converter import params_template, weight_quantize
from mnnq.params import template_layers


def with_bits(template, bits):
    params = copy.deepcopy(template)
    params.pop("forGuide", None)
    for entry in template_layers(params):
        entry["weight"][0].update(bits=bits, asymmetric=False, blockSize=-1)
    return params


def written(model, params, path):
    weight_quantize(model, path, params, hqq=False, asymmetric=False)
    return path.read_bytes()


def test_the_converter_reads_what_template_layers_reads(tiny_convnet, tmp_path):
    template = params_template(tiny_convnet.model)
    four, eight = with_bits(template, 4), with_bits(template, 8)
    four_bytes = written(tiny_convnet.model, four, tmp_path / "four.mnn")
    assert four_bytes != written(tiny_convnet.model, eight, tmp_path / "eight.mnn")

    untyped = copy.deepcopy(four)                    # no "type": QUANTIZE by default
    untyped["algo"][0].pop("type", None)
    assert template_layers(untyped) == template_layers(four)
    assert written(tiny_convnet.model, untyped, tmp_path / "untyped.mnn") == four_bytes

    two = copy.deepcopy(four)                        # a second QUANTIZE algo is ignored
    two["algo"].append(copy.deepcopy(eight["algo"][0]))
    assert template_layers(two) == template_layers(four)
    assert written(tiny_convnet.model, two, tmp_path / "two.mnn") == four_bytes

    pruned_first = copy.deepcopy(four)               # another type before it is skipped
    pruned_first["algo"].insert(0, {"type": "PRUNE"})
    assert template_layers(pruned_first) == template_layers(four)
    assert written(tiny_convnet.model, pruned_first, tmp_path / "pruned.mnn") == four_bytes


def test_auto_quant_py_flags_switch_hqq_off(tiny_convnet, tmp_path):
    """auto_quant.py converts with ``--hqq`` and ``--weightQuantAsymmetric=0``: the converter
    then disables HQQ and writes what plain asymmetric min-max (``--hqq 0``) writes, bit for
    bit (why its trials are cheap and its files larger; benchmarks/README.md)."""
    from mnnq.mnn_backend.converter import convert

    params = with_bits(params_template(tiny_convnet.model), 4)
    for entry in template_layers(params):
        entry["weight"][0]["asymmetric"] = True      # as the template lists them
    pfile = tmp_path / "params.json"
    pfile.write_text(json.dumps(params))
    as_auto_quant = tmp_path / "auto_quant.mnn"
    run = convert(tiny_convnet.model, as_auto_quant, extra=[
        "--weightQuantBits=8", "--weightQuantAsymmetric=0", "--hqq", "--thredhold", "0.001",
        "--alignDenormalizedValue", "0", "--compressionParamsFile", str(pfile)])
    assert "Disable Hqq" in run.output
    min_max = tmp_path / "min_max.mnn"
    weight_quantize(tiny_convnet.model, min_max, params, hqq=False, asymmetric=True)
    hqq = tmp_path / "hqq.mnn"
    weight_quantize(tiny_convnet.model, hqq, params, hqq=True, asymmetric=True)
    assert as_auto_quant.read_bytes() == min_max.read_bytes() != hqq.read_bytes()
