"""Real inputs for pretrained.py's models, made offline from what installed packages ship.

- photos and a scanned page: ``skimage.data`` (scikit-image);
- sentences: the prose of scikit-learn's bundled dataset descriptions (``sklearn/datasets/descr``);
- text lines: the scanned page's lines, and sentences rendered with Pillow's bundled font;
- speech: sentences spoken by ``espeak-ng`` (Debian package ``espeak-ng``), resampled to 16 kHz.

Images are HWC uint8 RGB; every function is deterministic.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path
from typing import List, Tuple

import numpy as np

# Crop: (y0, x0, side, mirror) in source pixels; a square cut out, resized to the model's input.
Crop = Tuple[int, int, int, bool]
ESPEAK_INSTALL = "apt-get install espeak-ng"


# ---------------------------------------------------------------------------------- photos

def image(name: str) -> np.ndarray:
    """An RGB uint8 image from skimage.data (grey images are repeated, alpha is dropped)."""
    from skimage import data
    img = getattr(data, name)()
    img = img[0] if isinstance(img, tuple) else img          # stereo_motorcycle -> left view
    img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
    return img


def crop(img: np.ndarray, where: Crop, size: int) -> np.ndarray:
    """Cut the square ``where`` out of ``img``, resize it to ``size`` and return HWC float in 0..255."""
    from skimage.transform import resize
    y0, x0, side, mirror = where
    patch = img[y0:y0 + side, x0:x0 + side]
    patch = patch[:, ::-1] if mirror else patch
    return resize(patch, (size, size), order=1, anti_aliasing=True, preserve_range=True)


def frac_crop(img: np.ndarray, scale: float, fy: float, fx: float, mirror: bool) -> Crop:
    """A square of ``scale`` x the short side, placed at fractions ``fy``/``fx`` of the free room."""
    h, w = img.shape[:2]
    side = int(round(scale * min(h, w)))
    return int(fy * (h - side)), int(fx * (w - side)), side, mirror


def framed(name: str, box: Tuple[float, float, float, float], mirror: bool) -> np.ndarray:
    """The ``(fy0, fy1, fx0, fx1)`` fractions of photo ``name``, mirrored left-right if asked; HWC uint8."""
    img = image(name)
    h, w = img.shape[:2]
    part = img[int(box[0] * h):int(box[1] * h), int(box[2] * w):int(box[3] * w)]
    return np.ascontiguousarray(part[:, ::-1] if mirror else part)


def nchw(hwc: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(hwc.transpose(2, 0, 1)[None], dtype=np.float32)


def resized(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """``img`` (HWC) resized to ``height`` x ``width``, float in the source range."""
    from skimage.transform import resize
    return resize(img, (height, width), order=1, anti_aliasing=True, preserve_range=True)


def letterbox(img: np.ndarray, size: int, fill: float = 114.0) -> np.ndarray:
    """YOLO's letterbox: the long side scaled to ``size``, centred on a ``fill`` grey square; HWC float."""
    h, w = img.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    out = np.full((size, size, 3), fill, np.float64)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = resized(img, nh, nw)
    return out


# ---------------------------------------------------------------------------------- text

def sentences(count: int, skip: int = 0) -> List[str]:
    """``count`` English sentences (40..200 characters) from scikit-learn's dataset descriptions,
    after skipping the first ``skip``."""
    import sklearn
    found: List[str] = []
    for path in sorted((Path(sklearn.__file__).parent / "datasets" / "descr").glob("*.rst")):
        prose = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        prose = [line for line in prose if line and line[0].isalpha() and not line.startswith(("..", "http"))]
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(prose)):
            if 40 <= len(sentence) <= 200 and sentence[0].isupper() and sentence.endswith("."):
                found.append(sentence)
    if len(found) < skip + count:
        raise RuntimeError(f"scikit-learn's dataset descriptions hold only {len(found)} usable sentences")
    return found[skip:skip + count]


# Text lines of skimage.data.page() (191 x 384): (y0, y1, x0, x1) around each printed line.
PAGE_LINES = [(10, 36, 0, 300), (46, 66, 0, 384), (64, 83, 0, 384), (81, 100, 0, 384), (98, 117, 0, 384),
              (114, 133, 0, 260), (166, 191, 20, 330), (46, 66, 150, 384)]


def page_line(index: int) -> np.ndarray:
    """A real scanned text line (HWC uint8 RGB) cut out of skimage.data.page()."""
    y0, y1, x0, x1 = PAGE_LINES[index]
    return image("page")[y0:y1, x0:x1]


def render_line(text: str, seed: int, height: int = 48, max_width: int = 100000) -> np.ndarray:
    """The words of ``text`` that fit in ``max_width`` pixels, printed on one line with Pillow's bundled
    font: HWC uint8 RGB, ``height`` high, dark ink on light paper (tints and blur picked by ``seed``)."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    rng = np.random.default_rng(seed)
    font = ImageFont.load_default(size=int(height * 0.6))
    words = text.split()
    while len(words) > 1 and font.getbbox(" ".join(words))[2] + height // 2 > max_width:
        words.pop()
    text = " ".join(words)
    left, top, right, bottom = font.getbbox(text)
    paper = tuple(int(v) for v in rng.integers(200, 256, 3))
    ink = tuple(int(v) for v in rng.integers(0, 70, 3))
    canvas = Image.new("RGB", (right - left + height // 2, height), paper)
    ImageDraw.Draw(canvas).text((height // 4 - left, (height - (bottom - top)) // 2 - top), text, fill=ink, font=font)
    return np.asarray(canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 0.8)))))


def text_line_input(line: np.ndarray, height: int, width: int) -> np.ndarray:
    """PaddleOCR's recogniser/classifier input: ``line`` scaled to ``height`` (aspect kept, at most
    ``width`` wide), BGR, ``(x / 255 - 0.5) / 0.5``, zero-padded on the right; NCHW float32."""
    h, w = line.shape[:2]
    new_w = min(width, int(np.ceil(height * w / h)))
    norm = (resized(line, height, new_w)[..., ::-1] / 255.0 - 0.5) / 0.5
    out = np.zeros((height, width, 3))
    out[:, :new_w] = norm
    return nchw(out)


# ---------------------------------------------------------------------------------- speech

def speech(text: str, voice: str, rate: int = 16000) -> np.ndarray:
    """``text`` spoken by espeak-ng with ``voice`` (e.g. ``en-us``), mono float32 in -1..1 at ``rate`` Hz."""
    from scipy.signal import resample_poly

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError(f"espeak-ng is not installed ({ESPEAK_INSTALL})")
    with tempfile.TemporaryDirectory(prefix="mnnq-speech-") as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run([exe, "-v", voice, "-s", "150", "-w", str(wav), text], check=True, capture_output=True)
        with wave.open(str(wav)) as w:
            source_rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float64) / 32768.0
    g = np.gcd(rate, source_rate)
    return resample_poly(pcm, rate // g, source_rate // g).astype(np.float32)
