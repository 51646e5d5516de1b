"""Calibration and held-out images for bench_quantize.py: image *files*, as a quantized.out user
has them (the tools read and resize them themselves).

Three domains, 24 calibration and 12 held-out images each, deterministic, made offline from what
installed packages ship (see model_inputs.py):

- ``photos``: skimage.data photos, whole or cropped / mirrored (held out: other framings and
  photos the calibration never sees);
- ``pages``: text pages -- sentences of scikit-learn's dataset descriptions printed with Pillow's
  bundled font on paper or on a dimmed photo, in several sizes and colours, and
  skimage.data.page() (held out: other sentences, layouts and backgrounds); every held-out page
  has text, so the text detector's probability map is never all but zero;
- ``lines``: single text lines (printed sentences and lines of skimage.data.page()), every second
  one upside down (the orientation classifier's two classes).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np

from benchmarks import model_inputs as mi

Named = Tuple[str, np.ndarray]          # (file stem, HWC uint8 RGB)
SPLITS = {"calib": 24, "heldout": 12}

# (photo, (fy0, fy1, fx0, fx1) fractions, mirrored)
PHOTOS = {
    "calib": [(n, (0, 1, 0, 1), False) for n in (
        "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "stereo_motorcycle",
        "retina", "camera", "coins", "page", "text", "clock", "moon", "brick", "cat")] + [
        ("astronaut", (0, 0.5, 0, 0.5), True), ("coffee", (0.4, 1, 0.4, 1), False), ("rocket", (0.2, 0.8, 0.1, 0.6), True),
        ("stereo_motorcycle", (0.1, 0.7, 0.4, 1), False), ("page", (0, 1, 0, 0.6), True), ("text", (0, 1, 0.3, 1), False),
        ("hubble_deep_field", (0.2, 0.6, 0.2, 0.6), True), ("grass", (0, 0.7, 0, 0.7), False)],
    "heldout": [
        ("colorwheel", (0, 1, 0, 1), False), ("logo", (0, 1, 0, 1), False), ("gravel", (0.1, 0.9, 0.1, 0.9), False),
        ("cell", (0, 0.9, 0.05, 0.95), True), ("astronaut", (0.4, 1, 0.4, 1), False), ("chelsea", (0.1, 0.8, 0.3, 1), True),
        ("coffee", (0, 0.5, 0, 0.5), True), ("rocket", (0.4, 1, 0.5, 1), False), ("page", (0, 0.9, 0.4, 1), False),
        ("text", (0, 1, 0, 0.6), True), ("immunohistochemistry", (0.5, 1, 0, 0.5), True), ("camera", (0.2, 0.7, 0.3, 0.8), True)],
}
BACKGROUNDS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def photos(split: str) -> List[Named]:
    return [(f"{i:02d}_{name}", mi.framed(name, box, mirror)) for i, (name, box, mirror) in enumerate(PHOTOS[split])]


def _paper(rng: np.random.Generator, size: int):
    """A page background (PIL image) and whether it is dark: plain paper, or a dimmed / faded photo."""
    from PIL import Image

    if rng.random() < 0.5:
        photo = mi.image(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))])
        h, w = photo.shape[:2]
        side = int(min(h, w) * rng.uniform(0.5, 0.9))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        part = np.asarray(Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size)), np.float32)
        dark = rng.random() < 0.3
        faded = part * 0.4 if dark else part * 0.35 + 150.0
        return Image.fromarray(np.clip(faded, 0, 255).astype(np.uint8)), dark
    dark = rng.random() < 0.2
    colour = rng.integers(0, 60, 3) if dark else rng.integers(180, 256, 3)
    return Image.new("RGB", (size, size), tuple(int(c) for c in colour)), dark


def text_page(seed: int, text: List[str], size: int = 480) -> np.ndarray:
    """Lines of ``text`` printed on a ``size`` x ``size`` page in random sizes and positions."""
    from PIL import ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    page, dark = _paper(rng, size)
    draw = ImageDraw.Draw(page)
    y, words = int(rng.integers(4, 40)), " ".join(text).split()
    while y < size - 30 and words:
        font_size = int(rng.integers(16, 44))
        take = int(rng.integers(1, 7))
        line, words = " ".join(words[:take]), words[take:]
        ink = rng.integers(190, 256, 3) if dark else rng.integers(0, 90, 3)
        draw.text((int(rng.integers(4, size // 3)), y), line, fill=tuple(int(c) for c in ink),
                  font=ImageFont.load_default(size=font_size))
        y += int(font_size * rng.uniform(1.3, 2.6))
    return np.asarray(page)


# scikit-learn's descriptions hold 91 usable sentences: the calibration images print the first 60,
# the held-out ones the other 31.
SENTENCES = {"calib": (0, 60), "heldout": (60, 31)}


def _sentences(split: str) -> List[str]:
    first, count = SENTENCES[split]
    return mi.sentences(count, first)


def pages(split: str) -> List[Named]:
    pool, seed0 = _sentences(split), 0 if split == "calib" else 1000
    out = []
    for i in range(SPLITS[split]):
        pick = np.random.default_rng(seed0 + i).choice(len(pool), 6, replace=False)
        out.append((f"{i:02d}_page", text_page(seed0 + i, [pool[j] for j in pick])))
    if split == "calib":         # the scanned page and the handwriting, as a user's folder might hold
        out[3] = ("03_skimage_page", mi.image("page"))
        out[10] = ("10_skimage_text", mi.image("text"))
    return out


def lines(split: str, aspect: float = 4.0) -> List[Named]:
    """Printed sentences (alternating with real page lines in the calibration set), every second
    one upside down; each about ``aspect`` times as wide as high."""
    pool, seed0 = _sentences(split), 0 if split == "calib" else 1000
    out = []
    for i in range(SPLITS[split]):
        if split == "calib" and i % 3 == 2:
            line = mi.page_line(i % len(mi.PAGE_LINES))
        else:
            line = mi.render_line(pool[i % len(pool)], seed=seed0 + i, height=48, max_width=int(48 * aspect))
        line = line[:, :int(line.shape[0] * aspect)]
        out.append((f"{i:02d}_line{'_flipped' if i % 2 else ''}", np.ascontiguousarray(line[::-1, ::-1] if i % 2 else line)))
    return out


DOMAINS = {"photos": photos, "pages": pages, "lines": lines}


def write_images(folder: Path, images: List[Named]) -> Path:
    """``images`` as PNG files ``<stem>.png`` in ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for stem, rgb in images:
        Image.fromarray(np.asarray(rgb, np.uint8)).save(folder / f"{stem}.png")
    return folder
