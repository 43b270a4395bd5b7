"""CLEVR v1.0 scene graphs -> a grounding / VQA / caption manifest.

A user with the public CLEVR download turns it into an evaluation set with one command:

    essen-datagen --from-clevr CLEVR_v1.0/scenes/CLEVR_val_scenes.json --out data/clevr-val
    (or: python -m essen_ros.data.clevr CLEVR_v1.0/scenes/CLEVR_val_scenes.json data/clevr-val)

CLEVR gives each object's 3D centre and its projected pixel centre (plus depth), not boxes.
Boxes come from fitting the scene's camera: with CLEVR's known intrinsics (525 px focal
length at 480x320, principal point at the image centre) every object's centre in camera
coordinates follows from its pixel and depth, so the camera pose is the rigid motion between
the two point sets (Kabsch), refined by Gauss-Newton on the reprojection error (which also
works without depths, starting from CLEVR's nominal camera). Each object's outline is then
projected with the fitted camera; its box is the outline's extent in the image.

Occlusion: when a renderer is available, the scene is re-rendered with the fitted camera and
objects that are mostly hidden are marked not visible (never targets or referents); without
one (`render=False`) every object counts as visible.

Images are referenced from the manifest by relative path (not copied) unless copy_images.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from essen_ros.data.scene import (CLEVR_FOCAL_AT_480, Camera, Lighting, Scene, SceneObject,
                                  clevr_camera, relations, surface_points)
from essen_ros.data.vocab import ATTRIBUTES

CLEVR_NOMINAL_POSITION = (7.358891, -6.925791, 4.958309)
MAX_FIT_RMS_PX = 5.0   # CLEVR pixel centres are rounded to whole pixels; a good fit is < 1 px


# -- camera fitting -----------------------------------------------------------------------------
def _project(rotation, position, points, focal, cx, cy):
    """rotation rows = camera right, down, forward in world coordinates (OpenCV style)."""
    cam = (points - position) @ rotation.T
    return np.stack([cx + focal * cam[:, 0] / cam[:, 2], cy + focal * cam[:, 1] / cam[:, 2]], 1)


def _rodrigues(w):
    theta = np.linalg.norm(w)
    if theta < 1e-12:
        return np.eye(3)
    k = w / theta
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(theta) * K + (1 - math.cos(theta)) * K @ K


def _kabsch(world, cam):
    """R, t with cam = R @ world + t (least squares)."""
    wc, cc = world.mean(0), cam.mean(0)
    h = (world - wc).T @ (cam - cc)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rot = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return rot, cc - rot @ wc


def fit_camera(world, pixels, depths=None, width=480, height=320, focal=None):
    """Camera whose projection of `world` (N, 3) best matches `pixels` (N, 2).

    Returns (Camera, rms reprojection error in px)."""
    world = np.asarray(world, float)
    pixels = np.asarray(pixels, float)
    focal = focal or CLEVR_FOCAL_AT_480 * width / 480.0
    cx, cy = width / 2.0, height / 2.0
    if depths is not None and len(world) >= 3:
        depths = np.asarray(depths, float)
        cam = np.stack([(pixels[:, 0] - cx) * depths / focal,
                        (pixels[:, 1] - cy) * depths / focal, depths], 1)
        rotation, t = _kabsch(world, cam)
        position = -rotation.T @ t
    else:
        nominal = clevr_camera(width, height)
        right, up, forward = nominal.axes()
        rotation = np.stack([right, -up, forward])
        position = np.asarray(nominal.position, float)

    # Gauss-Newton on the reprojection error; pose = small rotation w (left-multiplied) + position.
    def residual(params, base_rotation):
        r = _rodrigues(params[:3]) @ base_rotation
        return (_project(r, params[3:], world, focal, cx, cy) - pixels).ravel()

    params = np.concatenate([np.zeros(3), position])
    for _ in range(30):
        res = residual(params, rotation)
        jac = np.empty((res.size, 6))
        for k in range(6):
            step = np.zeros(6)
            step[k] = 1e-6
            jac[:, k] = (residual(params + step, rotation) - res) / 1e-6
        delta = np.linalg.lstsq(jac, -res, rcond=None)[0]
        params = params + delta
        rotation = _rodrigues(params[:3]) @ rotation
        params[:3] = 0.0
        if np.linalg.norm(delta) < 1e-9:
            break
    position = params[3:]
    rms = float(np.sqrt(np.mean(residual(params, rotation) ** 2)))
    right, down, forward = rotation
    fovy = math.degrees(2.0 * math.atan((height / 2.0) / focal))
    camera = Camera(tuple(float(x) for x in position),
                    tuple(float(x) for x in position + 10.0 * forward), fovy)
    # The fitted camera may roll slightly; Camera has no roll, so report the fit as used.
    used = camera.project(world, width, height)
    rms = float(np.sqrt(np.mean((used - pixels) ** 2)))
    return camera, rms


# -- scenes -------------------------------------------------------------------------------------
def clevr_scene_objects(scene: dict) -> list:
    objects = []
    for o in scene["objects"]:
        for attr in ("shape", "color", "material", "size"):
            if o.get(attr) not in ATTRIBUTES[attr]:
                raise ValueError(f"unknown {attr} {o.get(attr)!r} in {scene.get('image_filename')}")
        objects.append(SceneObject(shape=o["shape"], color=o["color"], material=o["material"],
                                   size=o["size"], position=tuple(float(x) for x in o["3d_coords"]),
                                   rotation=float(o.get("rotation", 0.0))))
    return objects


def convert_scene(scene: dict, width=480, height=320, renderer=None):
    """One CLEVR scene dict -> (Scene, boxes, centers, visible, relations, fit rms)."""
    objects = clevr_scene_objects(scene)
    if not objects:
        raise ValueError("scene without objects")
    pixel = np.array([o["pixel_coords"] for o in scene["objects"]], float)
    depths = pixel[:, 2] if pixel.shape[1] >= 3 else None
    camera, rms = fit_camera([o.position for o in objects], pixel[:, :2], depths, width, height)
    if not rms < MAX_FIT_RMS_PX:
        raise ValueError(f"camera fit failed (reprojection error {rms:.1f} px)")
    boxes, centers = [], []
    for obj in objects:
        outline = camera.project(surface_points(obj), width, height)
        x0, y0 = np.clip(outline.min(0), 0, [width, height])
        x1, y1 = np.clip(outline.max(0), 0, [width, height])
        boxes.append([round(float(x0), 1), round(float(y0), 1), round(float(x1), 1), round(float(y1), 1)])
        u, v = camera.project([obj.position], width, height)[0]
        centers.append([round(float(u), 1), round(float(v), 1)])
    visible = [True] * len(objects)
    result_scene = Scene(objects, camera, Lighting(), scene.get("image_filename", ""))
    if renderer is not None:
        visible = list(renderer.render(result_scene).visible)
    rels = scene.get("relationships")
    if not rels or any(len(rels.get(k, [])) != len(objects) for k in ("left", "right", "front", "behind")):
        rels = relations(objects, camera)
    rels = {k: rels[k] for k in ("left", "right", "front", "behind")}
    return result_scene, boxes, centers, visible, rels, rms


def convert(scenes_json, out, images_dir=None, limit=None, seed=0, render=True,
            copy_images=False, overwrite=False, texts=(6, 1, 8, 2), progress=True) -> dict:
    """Convert a CLEVR scenes file into a manifest folder. Returns counts."""
    from essen_ros.data.language import generate
    from essen_ros.data.manifest import ANNOTATIONS, ManifestWriter, item_from_text

    scenes_json = Path(scenes_json)
    if not scenes_json.is_file():
        raise FileNotFoundError(f"no CLEVR scenes file at {scenes_json}")
    out = Path(out)
    if (out / ANNOTATIONS).exists() and not overwrite:
        raise FileExistsError(f"{out / ANNOTATIONS} exists; use another --out or --overwrite")
    with open(scenes_json, encoding="utf-8") as f:
        data = json.load(f)
    scenes = data["scenes"] if isinstance(data, dict) else data
    if limit is not None:
        scenes = scenes[:limit]
    if images_dir is None:
        split = scenes[0].get("split", "val") if scenes else "val"
        images_dir = scenes_json.parent.parent / "images" / split
    images_dir = Path(images_dir)
    renderer = None
    if render:
        from essen_ros.data.render import Renderer
        renderer = Renderer(480, 320)
    out.mkdir(parents=True, exist_ok=True)
    counts = {"scenes": 0, "items": 0, "skipped_scenes": 0, "max_fit_rms_px": 0.0}
    from tqdm import tqdm
    n_ground, n_negative, n_vqa, n_caption = texts
    with ManifestWriter(out, overwrite=overwrite) as writer:
        for index, raw in enumerate(tqdm(scenes, unit="scene", disable=not progress, file=sys.stderr)):
            try:
                scene, boxes, centers, visible, rels, rms = convert_scene(raw, renderer=renderer)
            except (KeyError, ValueError, TypeError, np.linalg.LinAlgError) as error:
                counts["skipped_scenes"] += 1
                print(f"skipping scene {index}: {error}", file=sys.stderr)
                continue
            counts["max_fit_rms_px"] = max(counts["max_fit_rms_px"], round(rms, 2))
            source = images_dir / raw["image_filename"]
            if copy_images:
                image = f"images/{raw['image_filename']}"
                (out / "images").mkdir(exist_ok=True)
                shutil.copyfile(source, out / image)
            else:
                image = os.path.relpath(source, out)
            rng = np.random.default_rng([seed, index])
            shown = [i for i, v in enumerate(visible) if v]
            listed = [{"box": boxes[i], "center": centers[i], **scene.objects[i].attributes(),
                       "scene_index": i} for i in shown]
            scene_id = Path(raw["image_filename"]).stem
            for text in generate(scene.objects, visible, rels, rng, n_ground, n_negative, n_vqa, n_caption):
                writer.write_item(item_from_text(text, image, scene_id, listed, shown))
                counts["items"] += 1
            graph = scene.to_dict()
            graph.update(scene=scene_id, image=image, image_size=[480, 320], relations=rels,
                         camera_fit_rms_px=round(rms, 3))
            for i, obj in enumerate(graph["objects"]):
                obj.update(box=boxes[i], center=centers[i], visible=visible[i])
            writer.write_scene(graph)
            counts["scenes"] += 1
    if renderer is not None:
        renderer.close()
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m essen_ros.data.clevr", description=__doc__.split("\n\n")[0])
    p.add_argument("scenes_json", help="CLEVR_v1.0/scenes/CLEVR_<split>_scenes.json")
    p.add_argument("out", help="dataset folder to create")
    p.add_argument("--images-dir", help="folder of the scenes' images (default: ../images/<split>)")
    p.add_argument("--limit", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-render", action="store_true", help="skip the occlusion check")
    p.add_argument("--copy-images", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    try:
        counts = convert(args.scenes_json, args.out, args.images_dir, args.limit, args.seed,
                         render=not args.no_render, copy_images=args.copy_images,
                         overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, json.JSONDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
