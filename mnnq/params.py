"""Compression params files (``--compressionParamsFile``) for weight-only quantization.

mnnq starts from the template the converter writes for a model (one entry per quantizable
layer) and sets ``bits``, ``blockSize`` and ``asymmetric`` per layer, so the file stays
something MNNConvert itself accepts.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Dict, List, Optional

from mnnq.errors import BadInput
from mnnq.layers import LayerSetting


# A layer inside a subgraph (a While loop's body, ...) is keyed "<subgraph>::<op name>": op names
# repeat across subgraphs (the converter matches entries on (subgraphName, opName)).
GRAPH_SEP = "::"


def layer_key(op_name: str, graph: str = "") -> str:
    """The name mnnq gives a layer: its op name, prefixed with its subgraph's name when in one."""
    return f"{graph}{GRAPH_SEP}{op_name}" if graph else op_name


def entry_key(entry: dict) -> Optional[str]:
    """:func:`layer_key` of a params entry (None without an ``opName``)."""
    name = entry.get("opName") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name:
        return None
    graph = entry.get("subgraphName")
    return layer_key(name, graph if isinstance(graph, str) else "")


def template_layers(params: dict) -> List[dict]:
    """The per-layer entries the converter reads from a params dict: those of the first algo
    whose ``type`` is QUANTIZE (the protobuf default when absent) and that has ``quantParams``;
    later algos are ignored (``writeFb.cpp``; tests/test_params_rule.py pins it)."""
    algos = params.get("algo") if isinstance(params, dict) else None
    for algo in algos if isinstance(algos, list) else []:
        if not isinstance(algo, dict) or algo.get("type", "QUANTIZE") != "QUANTIZE":
            continue
        quant = algo.get("quantParams")
        if not isinstance(quant, dict):
            continue
        layers = quant.get("layer")
        return layers if isinstance(layers, list) else []
    return []


def with_settings(template: dict, settings: Dict[str, LayerSetting], asymmetric: bool) -> dict:
    """A copy of ``template`` with every listed layer set from ``settings``."""
    params = copy.deepcopy(template)
    for entry in template_layers(params):
        name = entry_key(entry)
        if name not in settings:
            continue
        s = settings[name]
        weight = entry.setdefault("weight", [{}])[0]
        weight["name"] = weight.get("name", name)
        weight["bits"] = int(s.bits)
        weight["blockSize"] = int(s.block)
        weight["asymmetric"] = bool(asymmetric)
    return params


def read_params_file(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"params file not found: {path}")
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"params file {path} is not valid JSON ({exc})") from None
    if not template_layers(doc):
        raise BadInput(f'params file {path} has no "algo" entry of type QUANTIZE with quantParams.layer; '
                       "start from the q.mnn.json that mnnq auto-quant writes")
    return doc


def settings_from_params(doc: dict, source: str) -> Dict[str, LayerSetting]:
    """Per-layer settings a params file asks for (validated)."""
    settings: Dict[str, LayerSetting] = {}
    for i, entry in enumerate(template_layers(doc)):
        name = entry_key(entry)
        weights = entry.get("weight") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not isinstance(weights, list) or not weights or not isinstance(weights[0], dict):
            raise BadInput(f'{source}: layer[{i}] needs "opName" and a "weight" list')
        w = weights[0]
        bits, block = w.get("bits", 8), w.get("blockSize", -1)
        if not isinstance(bits, int) or isinstance(bits, bool) or not (bits == 0 or 2 <= bits <= 8):
            raise BadInput(f"{source}: layer '{name}' has bits={bits!r}; use 0 (float) or 2..8")
        if not isinstance(block, int) or isinstance(block, bool) or (block != -1 and block < 0):
            raise BadInput(f"{source}: layer '{name}' has blockSize={block!r}; use -1 or a multiple of 16")
        settings[name] = LayerSetting(bits=bits, block=block if block > 0 else -1)
    return settings
