"""A PNG grid of a dataset's images with boxes and their texts, for a person to look at.

    python -m essen_ros.data.contact_sheet data/train --out data/train/contact_sheet.png
    (essen-datagen --contact-sheet writes one next to the generated set)

Each tile shows one image with the boxes of its grounding items (numbered, one colour each;
expressions that match nothing are listed with "not found"), and under it a few of its texts
with their labels: [n] grounding, Q question = answer, C caption (match / MISMATCH).
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from essen_ros.data.manifest import load_rgb, read_manifest

PALETTE = [(255, 64, 64), (64, 200, 255), (255, 210, 0), (80, 255, 80), (255, 120, 255),
           (255, 150, 40), (160, 160, 255), (255, 255, 255)]


def _font(size=11):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow: fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw, text, font, width):
    words, lines, line = text.split(), [], ""
    for word in words:
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    return lines


def make_contact_sheet(dataset, out, images: int = 12, columns: int = 4, tile_width: int = 320,
                       texts_per_image: int = 6, seed: int = 0) -> Path:
    """Draw up to `images` images of `dataset` (folder or .jsonl) into the PNG `out`."""
    items, report = read_manifest(dataset)
    if not items:
        raise ValueError(f"{dataset}: no items to show ({report})")
    by_image = collections.OrderedDict()
    for item in items:
        by_image.setdefault(item.image, []).append(item)
    names = list(by_image)
    rng = np.random.default_rng(seed)
    if len(names) > images:
        names = [names[i] for i in sorted(rng.choice(len(names), images, replace=False))]
    font = _font()
    line_height = 13
    tiles = []
    for name in names:
        group = by_image[name]
        rgb = load_rgb(group[0].image_path)
        scale = tile_width / rgb.shape[1]
        picture = Image.fromarray(rgb).resize((tile_width, max(1, round(rgb.shape[0] * scale))))
        draw = ImageDraw.Draw(picture)
        chosen = _pick_texts(group, texts_per_image)
        lines = []
        for n, item in enumerate(chosen):
            color = PALETTE[n % len(PALETTE)]
            if item.task == "ground":
                if item.found and item.box is not None:
                    box = [v * scale for v in item.box]
                    draw.rectangle(box, outline=color, width=2)
                    draw.text((box[0] + 2, box[1] + 1), str(n + 1), fill=color, font=font)
                    lines.append((f"[{n + 1}] {item.text}", color))
                else:
                    lines.append((f"[{n + 1}] {item.text} -> not found", color))
            elif item.task == "vqa":
                lines.append((f"Q {item.text} = {item.answer} ({item.kind})", (230, 230, 230)))
            else:
                label = "match" if item.match else "MISMATCH"
                lines.append((f"C {item.text} ({label})", (200, 200, 200)))
        wrapped = []
        for text, color in lines:
            wrapped += [(part, color) for part in _wrap(draw, text, font, tile_width - 6)]
        tile = Image.new("RGB", (tile_width, picture.height + 4 + line_height * len(wrapped) + 16),
                         (25, 25, 25))
        tile.paste(picture, (0, 0))
        tdraw = ImageDraw.Draw(tile)
        tdraw.text((3, picture.height + 2), Path(name).name, fill=(150, 150, 150), font=font)
        for k, (text, color) in enumerate(wrapped):
            tdraw.text((3, picture.height + 16 + k * line_height), text, fill=color, font=font)
        tiles.append(tile)
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    heights = [max(t.height for t in row) for row in rows]
    sheet = Image.new("RGB", (columns * (tile_width + 4), sum(heights) + 4 * len(rows)), (0, 0, 0))
    y = 0
    for row, height in zip(rows, heights):
        for c, tile in enumerate(row):
            sheet.paste(tile, (c * (tile_width + 4), y))
        y += height + 4
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    sheet.save(tmp, format="PNG")
    tmp.replace(out)
    return out


def _pick_texts(group, count):
    """A few of each task so a tile shows grounding, questions and captions together."""
    ground = [i for i in group if i.task == "ground"]
    vqa = [i for i in group if i.task == "vqa"]
    caption = [i for i in group if i.task == "caption"]
    half = max(1, count // 2)
    chosen = ground[:half] + vqa[: max(1, count - half - 1)] + caption[:1]
    return chosen[:count] if len(chosen) > count else chosen


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m essen_ros.data.contact_sheet",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", help="dataset folder or annotations .jsonl")
    p.add_argument("--out", help="PNG to write (default: <dataset>/contact_sheet.png)")
    p.add_argument("--images", type=int, default=12)
    p.add_argument("--columns", type=int, default=4)
    p.add_argument("--texts", type=int, default=6, help="texts shown per image")
    args = p.parse_args(argv)
    dataset = Path(args.dataset)
    out = args.out or (dataset if dataset.is_dir() else dataset.parent) / "contact_sheet.png"
    try:
        path = make_contact_sheet(dataset, out, args.images, args.columns, texts_per_image=args.texts)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
