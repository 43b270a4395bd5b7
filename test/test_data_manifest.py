"""Manifest reader/writer: clevr-dev as-is, bad lines counted, atomic writes."""
import json

import numpy as np
import pytest

from essen_ros.data.manifest import (Item, ManifestWriter, infer_kind, load_rgb, read_manifest,
                                     save_png, write_manifest)
from essen_ros.data.vocab import ANSWERS, COLORS, MATERIALS, SHAPES, SIZES


def test_clevr_dev_loads_all_2501_items_with_resolvable_images(clevr_dev):
    items, report = read_manifest(clevr_dev, check_images=True)
    assert len(items) == 2501 and report.skipped == 0
    assert sum(i.task == "ground" for i in items) == 526
    assert sum(i.task == "vqa" for i in items) == 1975
    ground = next(i for i in items if i.task == "ground")
    assert ground.found and ground.objects[ground.target]["box"] == ground.box
    image = load_rgb(ground.image_path)
    assert image.shape == (320, 480, 3) and image.dtype == np.uint8   # RGBA file -> RGB
    assert {i.kind for i in items if i.task == "vqa"} == {"attribute", "count", "exist"}


def test_reading_the_jsonl_file_equals_reading_the_folder(clevr_dev):
    a, _ = read_manifest(clevr_dev)
    b, _ = read_manifest(clevr_dev / "annotations.jsonl")
    assert [x.image_path for x in a[:20]] == [x.image_path for x in b[:20]]


def test_bad_lines_are_skipped_and_counted(tmp_path):
    good = {"image": "a.png", "task": "vqa", "text": "how many things?", "answer": "3"}
    lines = [json.dumps(good), "{not json", json.dumps({"task": "vqa", "text": "x", "answer": "3"}),
             json.dumps({**good, "answer": "maybe"}), json.dumps({**good, "task": "dance"}),
             json.dumps({"image": "a.png", "task": "ground", "text": "the cube"}),
             json.dumps({"image": "a.png", "task": "ground", "text": "the cube", "found": False}),
             "", json.dumps({"image": "a.png", "task": "caption", "text": "a cube"})]
    (tmp_path / "annotations.jsonl").write_text("\n".join(lines) + "\n")
    items, report = read_manifest(tmp_path)
    assert [i.task for i in items] == ["vqa", "ground"]
    assert items[0].kind == "count" and items[1].found is False
    assert report.lines == 8 and report.skipped == 6
    assert report.reasons["invalid JSON"] == 1 and report.reasons["missing image"] == 1
    assert "6 skipped" in str(report)


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest"):
        read_manifest(tmp_path)


def test_kind_is_inferred_when_absent():
    assert infer_kind("7") == "count"
    assert infer_kind("yes", "is there a cube?") == "exist"
    assert infer_kind("no", "is the cube the same size as the ball?") == "compare"
    assert infer_kind("red") == "attribute"


def test_answer_vocabulary_order_is_frozen():
    assert ANSWERS == list(COLORS) + list(SHAPES) + list(MATERIALS) + list(SIZES) + \
        ["yes", "no"] + [str(n) for n in range(11)]
    assert ANSWERS[:3] == ["gray", "red", "blue"] and ANSWERS[-1] == "10" and len(ANSWERS) == 28
    assert len(set(ANSWERS)) == len(ANSWERS)


def test_round_trip_and_nothing_written_when_interrupted(tmp_path):
    items = [Item("i.png", "ground", "the cube", box=[1, 2, 3, 4], target=0,
                  objects=[{"box": [1, 2, 3, 4], "center": [2, 3], "shape": "cube"}]),
             Item("i.png", "ground", "the cone", found=False, objects=[]),
             Item("i.png", "vqa", "what color is it?", answer="red", kind="attribute"),
             Item("i.png", "caption", "a cube", match=True)]
    write_manifest(tmp_path / "ok", items, scenes=[{"scene": "0"}])
    back, report = read_manifest(tmp_path / "ok")
    assert report.skipped == 0
    assert [(b.task, b.found, b.box, b.answer, b.match) for b in back] == \
        [(i.task, i.found, i.box and [float(v) for v in i.box], i.answer, i.match) for i in items]
    with pytest.raises(RuntimeError):
        with ManifestWriter(tmp_path / "broken") as writer:
            writer.write_item(items[0])
            raise RuntimeError("interrupted")
    assert list((tmp_path / "broken").iterdir()) == []
    with pytest.raises(FileExistsError):
        ManifestWriter(tmp_path / "ok")


def test_png_written_atomically_and_read_back_as_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (9, 13, 3), dtype=np.uint8)
    save_png(tmp_path / "images" / "x.png", rgb)
    assert np.array_equal(load_rgb(tmp_path / "images" / "x.png"), rgb)
    assert [p.name for p in (tmp_path / "images").iterdir()] == ["x.png"]


def test_a_line_that_is_not_utf8_is_skipped_and_the_rest_still_load(tmp_path):
    good = {"image": "a.png", "task": "vqa", "text": "how many things?", "answer": "3"}
    data = (json.dumps(good) + "\n").encode() + b'{"image": "\xff\xfe", "task": "vqa"}\n' \
        + (json.dumps({**good, "answer": "2"}) + "\n").encode()
    (tmp_path / "annotations.jsonl").write_bytes(data)
    items, report = read_manifest(tmp_path)
    assert [i.answer for i in items] == ["3", "2"]
    assert report.skipped == 1 and report.reasons["not UTF-8 text"] == 1
