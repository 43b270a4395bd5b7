"""CLEVR v1.0 scenes -> manifest: camera fitting gives boxes, labels come from the scene graph."""
import json

import numpy as np
import pytest

from essen_ros.data.clevr import CLEVR_NOMINAL_POSITION, fit_camera
from essen_ros.data.language import execute
from essen_ros.data.manifest import read_manifest, read_scenes, save_png
from essen_ros.data.render import Renderer, surface_points
from essen_ros.data.scene import Camera, Scene, clevr_fovy, sample_scene
from essen_ros.datagen import main


def clevr_like_camera(rng):
    """CLEVR's camera: nominal position jittered by up to 0.5, looking at the origin."""
    position = tuple(np.add(CLEVR_NOMINAL_POSITION, rng.uniform(-0.5, 0.5, 3)))
    return Camera(position, (0.0, 0.0, 0.0), clevr_fovy(480, 320))


def clevr_scene_dict(scene, camera, index, with_depth=True):
    """A scene in CLEVR v1.0's JSON layout (pixel centres rounded, as CLEVR stores them)."""
    _, _, forward = camera.axes()
    objects = []
    for obj in scene.objects:
        u, v = camera.project([obj.position], 480, 320)[0]
        depth = float(np.dot(np.subtract(obj.position, camera.position), forward))
        pixel = [int(round(u)), int(round(v))] + ([round(depth, 4)] if with_depth else [])
        objects.append({"shape": obj.shape, "color": obj.color, "material": obj.material,
                        "size": obj.size, "rotation": obj.rotation,
                        "3d_coords": list(obj.position), "pixel_coords": pixel})
    return {"split": "val", "image_index": index, "image_filename": f"CLEVR_val_{index:06d}.png",
            "objects": objects}


@pytest.mark.parametrize("with_depth", [True, False])
def test_camera_fit_recovers_clevr_cameras_from_rounded_pixel_centres(with_depth):
    for i in range(8):
        rng = np.random.default_rng(i)
        scene = sample_scene(rng, n_objects=3 + i)
        camera = clevr_like_camera(rng)
        d = clevr_scene_dict(scene, camera, i, with_depth)
        pixels = np.array([o["pixel_coords"] for o in d["objects"]], float)
        fitted, rms = fit_camera([o.position for o in scene.objects], pixels[:, :2],
                                 pixels[:, 2] if with_depth else None)
        assert rms < 1.0
        assert np.linalg.norm(np.subtract(fitted.position, camera.position)) < 0.4
        for obj in scene.objects:
            true = camera.project(surface_points(obj), 480, 320)
            fit = fitted.project(surface_points(obj), 480, 320)
            assert np.abs(true - fit).max() < 2.0


@pytest.fixture(scope="module")
def clevr_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("clevr") / "CLEVR_v1.0"
    scenes = []
    with Renderer(480, 320) as renderer:
        for i in range(4):
            rng = np.random.default_rng(100 + i)
            scene = sample_scene(rng)
            camera = clevr_like_camera(rng)
            save_png(root / "images" / "val" / f"CLEVR_val_{i:06d}.png",
                     renderer.render(scene, camera).rgb)
            scenes.append(clevr_scene_dict(scene, camera, i, with_depth=i != 3))
    bad = json.loads(json.dumps(scenes[0]))
    bad["objects"][0]["shape"] = "pyramid"
    scenes.append(bad)
    (root / "scenes").mkdir(parents=True)
    (root / "scenes" / "CLEVR_val_scenes.json").write_text(json.dumps({"info": {}, "scenes": scenes}))
    return root


def test_one_command_turns_clevr_scenes_into_a_labelled_manifest(clevr_root, tmp_path, capsys):
    out = tmp_path / "clevr-val"
    assert main(["--from-clevr", str(clevr_root / "scenes" / "CLEVR_val_scenes.json"),
                 "--out", str(out), "--no-progress"]) == 0
    assert "1 skipped" in capsys.readouterr().out     # the scene with an unknown shape
    items, report = read_manifest(out, check_images=True)   # images referenced in place
    assert report.skipped == 0 and len(items) > 4 * 10
    graphs = read_scenes(out)
    assert len(graphs) == 4
    for item in items:
        graph = graphs[item.scene]
        label = execute(item.program, Scene.from_dict(graph).objects, graph["relations"])
        if item.task == "ground":
            assert label == (item.objects[item.target]["scene_index"] if item.found else None)
        elif item.task == "vqa":
            assert label == item.answer
        else:
            assert label is item.match


def test_fitted_boxes_enclose_the_objects_rendered_pixels(clevr_root, tmp_path):
    out = tmp_path / "boxes"
    assert main(["--from-clevr", str(clevr_root / "scenes" / "CLEVR_val_scenes.json"),
                 "--out", str(out), "--no-progress", "--images", "2"]) == 0
    with Renderer(480, 320) as renderer:
        for i, graph in enumerate(read_scenes(out).values()):
            truth = Scene.from_dict(graph)
            rng = np.random.default_rng(100 + i)
            sample_scene(rng)
            result = renderer.render(truth, clevr_like_camera(rng))
            for k, obj in enumerate(graph["objects"]):
                if result.visible[k] and result.visible_fraction[k] > 0.95:
                    seg_box, fit_box = np.array(result.boxes[k]), np.array(obj["box"])
                    assert np.abs(seg_box - fit_box).max() < 4, (seg_box, fit_box)


def test_missing_scenes_file_is_a_clear_error(tmp_path, capsys):
    assert main(["--from-clevr", str(tmp_path / "nope.json"), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    assert "no CLEVR scenes file" in capsys.readouterr().err
