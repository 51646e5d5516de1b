"""Which entries of a compression params file the converter reads: the first QUANTIZE algo
(type QUANTIZE by default) with quantParams. mnnq.params.template_layers is the one rule for
that; here it is pinned to the converter's real behaviour."""
import copy

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
