"""Datasets on disk: a folder with `annotations.jsonl` (one JSON object per item) and images.

The format is the one of `../shared/data/clevr-dev` (see docs/ARCHITECTURE.md, "Manifest");
generated sets add `kind`, `found`, `match`, `scene`, object attributes, a `program` (what
the text means, see essen_ros.data.language) and a `scenes.jsonl` with the full scene graphs.

    items, report = read_manifest("data/train")        # folder or .jsonl file
    items[0].image_path, items[0].task, items[0].text  # Item fields
    print(report)                                      # loaded / skipped lines and why

Writing is atomic: `ManifestWriter` writes `*.jsonl.tmp` files and renames them only when
closed without error, and `save_png` writes each image to a temp file and renames it, so an
interrupted run never leaves a half-written annotation line or image behind.
"""
from __future__ import annotations

import collections
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from essen_ros.data.vocab import ANSWERS

ANNOTATIONS = "annotations.jsonl"
SCENES = "scenes.jsonl"
TASKS = ("ground", "vqa", "caption")
KINDS = ("attribute", "count", "exist", "compare")


@dataclass
class Item:
    image: str                       # path relative to the dataset folder
    task: str                        # ground | vqa | caption
    text: str
    variant: str = "template"
    found: bool = True               # ground: False when the expression matches nothing
    box: list | None = None          # ground: [x0, y0, x1, y1] image pixels
    target: int | None = None        # ground: index into objects
    objects: list | None = None      # ground: [{"box", "center", ...attributes}]
    answer: str | None = None        # vqa: one word of ANSWERS
    kind: str | None = None          # vqa: attribute | count | exist | compare
    match: bool | None = None        # caption: True when the text describes the image
    scene: str | None = None
    program: dict | None = None
    root: Path | None = field(default=None, repr=False, compare=False)

    @property
    def image_path(self) -> Path:
        return (self.root / self.image) if self.root is not None else Path(self.image)

    def to_dict(self) -> dict:
        d = {"image": self.image, "task": self.task, "variant": self.variant, "text": self.text}
        if self.task == "ground":
            if not self.found:
                d.update(found=False, box=None, target=None)
            else:
                d.update(box=self.box, target=self.target)
            d["objects"] = self.objects
        elif self.task == "vqa":
            d.update(answer=self.answer, kind=self.kind)
        else:
            d["match"] = self.match
        if self.scene is not None:
            d["scene"] = self.scene
        if self.program is not None:
            d["program"] = self.program
        return d


@dataclass
class ManifestReport:
    path: str
    lines: int = 0
    loaded: int = 0
    skipped: int = 0
    reasons: collections.Counter = field(default_factory=collections.Counter)
    first_errors: list = field(default_factory=list)   # (line number, reason), a few

    def skip(self, line_number: int, reason: str):
        self.skipped += 1
        self.reasons[reason] += 1
        if len(self.first_errors) < 5:
            self.first_errors.append((line_number, reason))

    def __str__(self):
        text = f"{self.path}: {self.loaded} items from {self.lines} lines"
        if self.skipped:
            why = ", ".join(f"{r} x{n}" for r, n in self.reasons.most_common())
            text += f", {self.skipped} skipped ({why})"
        return text


def infer_kind(answer: str, text: str = "") -> str:
    if answer.isdigit():
        return "count"
    if answer in ("yes", "no"):
        return "compare" if "same" in text or " as " in text else "exist"
    return "attribute"


def _is_box(value) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def parse_item(d: dict, root: Path | None = None) -> Item:
    """One annotation object -> Item; ValueError says what is missing or wrong."""
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    for key in ("image", "task", "text"):
        if not isinstance(d.get(key), str) or not d[key]:
            raise ValueError(f"missing {key}")
    task = d["task"]
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}")
    item = Item(image=d["image"], task=task, text=d["text"], variant=d.get("variant") or "template",
                scene=d.get("scene"), program=d.get("program"), root=root)
    if task == "ground":
        item.found = d.get("found", True) is not False
        item.objects = d.get("objects")
        if item.found:
            if not _is_box(d.get("box")):
                raise ValueError("ground item without a box")
            target = d.get("target")
            if isinstance(target, int) and not isinstance(target, bool):
                if not isinstance(item.objects, list) or not 0 <= target < len(item.objects):
                    raise ValueError("target outside objects")
            item.box = [float(v) for v in d["box"]]
            item.target = target
    elif task == "vqa":
        answer = d.get("answer")
        if not isinstance(answer, str):
            raise ValueError("vqa item without an answer")
        if answer not in ANSWERS:
            raise ValueError("answer not in ANSWERS")
        item.answer = answer
        item.kind = d.get("kind") or infer_kind(answer, d["text"])
        if item.kind not in KINDS:
            raise ValueError(f"unknown kind {item.kind!r}")
    else:
        if not isinstance(d.get("match"), bool):
            raise ValueError("caption item without match")
        item.match = d["match"]
    return item


def read_manifest(path, check_images: bool = False):
    """Read a dataset folder (or its .jsonl). Returns (items, ManifestReport); bad lines are
    skipped and counted, never fatal. FileNotFoundError when there is no manifest at all."""
    path = Path(path)
    manifest = path / ANNOTATIONS if path.is_dir() else path
    if not manifest.is_file():
        raise FileNotFoundError(f"no manifest at {manifest} (expected a folder with {ANNOTATIONS} "
                                f"or a .jsonl file)")
    root = manifest.parent
    report = ManifestReport(str(manifest))
    items = []
    seen_images = {}
    with open(manifest, "rb") as f:  # bytes: one undecodable line must not cost the rest
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            report.lines += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                report.skip(number, "not UTF-8 text")
                continue
            try:
                item = parse_item(json.loads(line), root)
            except json.JSONDecodeError:
                report.skip(number, "invalid JSON")
                continue
            except ValueError as error:
                report.skip(number, str(error))
                continue
            if check_images:
                exists = seen_images.get(item.image)
                if exists is None:
                    exists = seen_images[item.image] = item.image_path.is_file()
                if not exists:
                    report.skip(number, "image file missing")
                    continue
            items.append(item)
    report.loaded = len(items)
    return items, report


def read_scenes(path) -> dict:
    """scenes.jsonl of a generated set -> {scene id: scene graph dict}."""
    path = Path(path)
    scenes_file = path / SCENES if path.is_dir() else path
    scenes = {}
    with open(scenes_file, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                scenes[d["scene"]] = d
    return scenes


def item_from_text(text: dict, image: str, scene_id: str, listed: list[dict], shown: list[int]) -> dict:
    """One manifest line from a generated text (essen_ros.data.language.generate).
    `listed` are the visible objects as written into the line (box, centre, attributes),
    `shown[k]` the scene index of listed object k."""
    item = {"image": image, "task": text["task"], "variant": text["variant"],
            "text": text["text"], "scene": scene_id}
    if text["task"] == "ground":
        if text.get("found", True) is False:
            item.update(found=False, box=None, target=None)
        else:
            target = shown.index(text["target_scene_index"])
            item.update(box=listed[target]["box"], target=target)
        item["objects"] = listed
    elif text["task"] == "vqa":
        item.update(answer=text["answer"], kind=text["kind"])
    else:
        item["match"] = text["match"]
    item["program"] = text["program"]
    return item


def save_png(path, rgb: np.ndarray, compress_level: int = 1):
    """Write an RGB uint8 image atomically (temp file in the same folder, then rename)."""
    from PIL import Image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(
                f, format="PNG", compress_level=compress_level)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_rgb(path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB (the package's one image layout)."""
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


class ManifestWriter:
    """Append items and scenes; files appear (atomically renamed) only on a clean close."""

    def __init__(self, folder, overwrite: bool = False):
        self.folder = Path(folder)
        target = self.folder / ANNOTATIONS
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; choose another folder or pass overwrite")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._files = {}
        for name in (ANNOTATIONS, SCENES):
            self._files[name] = open(self.folder / (name + ".tmp"), "w", encoding="utf-8")
        self.count = 0

    def write_item(self, item):
        d = item.to_dict() if isinstance(item, Item) else item
        self._files[ANNOTATIONS].write(json.dumps(d, separators=(",", ":")) + "\n")
        self.count += 1

    def write_lines(self, item_lines, scene_line=None):
        """Pre-serialised JSON lines (each ending in a newline), e.g. from worker processes."""
        self._files[ANNOTATIONS].writelines(item_lines)
        self.count += len(item_lines)
        if scene_line is not None:
            self._files[SCENES].write(scene_line)

    def write_scene(self, scene: dict):
        self._files[SCENES].write(json.dumps(scene, separators=(",", ":")) + "\n")

    def close(self, commit: bool = True):
        for name, f in self._files.items():
            f.close()
            tmp = self.folder / (name + ".tmp")
            if commit:
                os.replace(tmp, self.folder / name)
            else:
                tmp.unlink(missing_ok=True)
        self._files = {}

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(commit=exc_type is None)


def write_manifest(folder, items, scenes=(), overwrite: bool = False):
    with ManifestWriter(folder, overwrite=overwrite) as writer:
        for item in items:
            writer.write_item(item)
        for scene in scenes:
            writer.write_scene(scene)
