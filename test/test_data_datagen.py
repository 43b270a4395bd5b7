"""essen-datagen end to end: determinism, label checks on the written files, bad requests."""
import filecmp
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from essen_ros.data.language import execute
from essen_ros.data.manifest import read_manifest, read_scenes
from essen_ros.data.scene import Scene
from essen_ros.datagen import main

SMALL = ["--width", "128", "--height", "96", "--no-progress"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "set"
    assert main(["--out", str(out), "--images", "8", "--seed", "4", "--workers", "1", *SMALL]) == 0
    return out


def test_same_seed_gives_identical_files_whatever_the_worker_count(generated, tmp_path):
    other = tmp_path / "two_workers"
    assert main(["--out", str(other), "--images", "8", "--seed", "4", "--workers", "2", *SMALL]) == 0
    for name in ("annotations.jsonl", "scenes.jsonl"):
        assert filecmp.cmp(generated / name, other / name, shallow=False)
    for png in sorted((generated / "images").iterdir()):
        assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(other / "images" / png.name)))
    different = tmp_path / "seed5"
    assert main(["--out", str(different), "--images", "2", "--seed", "5", "--workers", "1", *SMALL]) == 0
    assert not filecmp.cmp(generated / "scenes.jsonl", different / "scenes.jsonl", shallow=False)


def test_written_labels_agree_with_the_written_scene_graphs(generated):
    items, report = read_manifest(generated, check_images=True)
    assert report.skipped == 0 and len(items) > 8 * 10
    scenes = read_scenes(generated)
    assert len(scenes) == 8
    for item in items:
        graph = scenes[item.scene]
        objects = Scene.from_dict(graph).objects
        label = execute(item.program, objects, graph["relations"])
        if item.task == "ground":
            if not item.found:
                assert label is None and item.box is None
                continue
            listed = item.objects[item.target]
            assert label == listed["scene_index"]
            assert item.box == listed["box"] == graph["objects"][label]["box"]
            assert graph["objects"][label]["visible"]
            assert all(o["shape"] and o["color"] and o["material"] and o["size"] for o in item.objects)
        elif item.task == "vqa":
            assert label == item.answer
        else:
            assert label is item.match


def test_images_are_png_of_the_requested_size(generated):
    with Image.open(generated / "images" / "000000.png") as image:
        assert image.format == "PNG" and image.size == (128, 96) and image.mode == "RGB"


@pytest.mark.parametrize("args, message", [
    (["--images", "0"], "at least 1"),
    (["--images", "3", "--max-objects", "11"], "do not fit"),
    (["--images", "3", "--min-objects", "12", "--max-objects", "12"], "do not fit"),
    (["--images", "3", "--shapes", "cube", "pyramid"], "unknown shape 'pyramid'"),
    (["--images", "3", "--colors", "orange"], "unknown color 'orange'"),
    (["--images", "3", "--width", "4"], "image size"),
])
def test_impossible_requests_fail_clearly_before_rendering(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert main(["--out", str(out), *args, "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_existing_dataset_is_not_overwritten_without_asking(generated, capsys):
    before = (generated / "annotations.jsonl").read_bytes()
    assert main(["--out", str(generated), "--images", "1", *SMALL]) == 2
    assert "exists" in capsys.readouterr().err
    assert (generated / "annotations.jsonl").read_bytes() == before


def test_console_script_reports_its_rate(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "essen_ros.datagen", "--out", str(out),
                           "--images", "2", "--workers", "1", "--contact-sheet", *SMALL],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "images/s" in proc.stdout
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.width > 128 and sheet.height > 96


def test_missing_render_backend_says_what_to_set_and_writes_nothing(tmp_path):
    import os
    out = tmp_path / "never"
    env = {**os.environ, "MUJOCO_GL": "no-such-backend"}
    proc = subprocess.run([sys.executable, "-m", "essen_ros.datagen", "--out", str(out),
                           "--images", "2", "--workers", "2", "--no-progress"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 3
    assert "Set MUJOCO_GL=egl" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
