"""Shared pieces for the evaluation and bag tests: a small dataset written on the fly, a
predictor with known outputs, and a random tiny checkpoint."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

OBJECTS = [{"box": [4.0, 4.0, 30.0, 30.0], "center": [17, 17]},
           {"box": [50.0, 20.0, 90.0, 60.0], "center": [70, 40]}]


def sample_image(width: int = 96, height: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus solid blocks: JPEG stays close, a channel swap or shear shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([255 * x / (width - 1), 255 * y / (height - 1),
                    128 + 100 * np.sin(x / 9.0 + y / 13.0 + seed)], axis=2)
    for _ in range(3):
        x0, y0 = rng.integers(0, width - 16), rng.integers(0, height - 16)
        rgb[y0:y0 + 14, x0:x0 + 14] = rng.integers(0, 256, 3)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def dataset_lines(n_images: int = 2) -> list[dict]:
    """Per image: two commands (one matches nothing) and three questions."""
    lines = []
    for i in range(n_images):
        image = f"images/img{i}.png"
        lines += [
            {"image": image, "task": "ground", "variant": "template", "text": "the left thing",
             "box": OBJECTS[0]["box"], "target": 0, "objects": OBJECTS},
            {"image": image, "task": "vqa", "variant": "template",
             "text": "what color is the cube?", "answer": "red"},
            {"image": image, "task": "ground", "variant": "relational", "found": False,
             "text": "the purple sphere left of the cube", "box": None, "target": None,
             "objects": OBJECTS},
            {"image": image, "task": "vqa", "variant": "template",
             "text": "how many spheres are there?", "answer": "2"},
            {"image": image, "task": "vqa", "variant": "relational",
             "text": "is there a cube left of the sphere?", "answer": "yes"},
        ]
    return lines


def make_dataset(folder: Path, n_images: int = 2, extra_lines: list[str] = ()) -> Path:
    """A manifest folder like clevr-dev: images/*.png (RGBA, as CLEVR's) + annotations.jsonl."""
    (folder / "images").mkdir(parents=True)
    for i in range(n_images):
        rgb = sample_image(seed=i)
        rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
        PILImage.fromarray(rgba, "RGBA").save(folder / "images" / f"img{i}.png")
    with (folder / "annotations.jsonl").open("w") as handle:
        for line in dataset_lines(n_images):
            handle.write(json.dumps(line) + "\n")
        for raw in extra_lines:
            handle.write(raw + "\n")
    return folder


# ----------------------------------------------------------------------------- fake model
@dataclass
class FakeImage:
    rgb: np.ndarray
    ms: float = 1.0


@dataclass
class FakeText:
    text: str
    truncated: bool = False


@dataclass
class FakeGround:
    found: bool
    score: float
    box_xyxy: list
    candidates: list = field(default_factory=list)
    ms: float = 2.0


@dataclass
class FakeAnswer:
    answer: str
    score: float
    top: list = field(default_factory=list)
    ms: float = 3.0


class FakePredictor:
    """Known outputs: grounds every command on object 0 (right for "the left thing", a false
    match for the not-found expression), answers "red" to everything. Counts encodings."""

    threshold = 0.5
    answers = ["red", "blue", "yes", "no", "0", "1", "2"]

    def __init__(self):
        self.image_encodings = 0
        self.text_encodings: list[str] = []

    def encode_image(self, rgb):
        self.image_encodings += 1
        return FakeImage(rgb)

    def encode_text(self, text):
        self.text_encodings.append(text)
        return FakeText(text)

    def ground(self, img, text, threshold=None):
        return FakeGround(True, 0.9, list(OBJECTS[0]["box"]))

    def answer(self, img, text, top_k=5):
        return FakeAnswer("red", 0.8, [("red", 0.8), ("blue", 0.1)])


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "data")
