"""essen-datagen: render a dataset of tabletop scenes with grounded language.

    essen-datagen --out data/train --images 20000 --seed 0 --workers 2

writes `data/train/annotations.jsonl`, `scenes.jsonl` and `images/NNNNNN.png` (the manifest
format of docs/ARCHITECTURE.md). Image i depends only on (seed, i), so the files are the same
whatever the number of workers. Bad requests fail before anything is rendered.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from essen_ros.data.scene import MAX_OBJECTS, validate_request
from essen_ros.data.vocab import COLORS, MATERIALS, SHAPES, SIZES

# Image sizes drawn with --vary-size (width, height); CLEVR's 480x320 is the default size.
VARIED_SIZES = ((480, 320), (320, 240), (400, 300), (640, 480), (416, 416), (512, 288),
                (360, 270), (448, 336))


@dataclass
class GenerationConfig:
    images: int
    seed: int = 0
    width: int = 480
    height: int = 320
    vary_size: bool = False
    shadows: bool = True
    min_objects: int = 3
    max_objects: int = MAX_OBJECTS
    shapes: tuple = SHAPES
    colors: tuple = COLORS
    materials: tuple = MATERIALS
    sizes: tuple = SIZES
    ground_per_image: int = 6
    negatives_per_image: int = 1
    vqa_per_image: int = 8
    captions_per_image: int = 2
    write_images: bool = True

    def validate(self):
        if not isinstance(self.images, int) or self.images < 1:
            raise ValueError(f"--images must be at least 1, got {self.images}")
        if self.width < 16 or self.height < 16 or self.width > 4096 or self.height > 4096:
            raise ValueError(f"image size {self.width}x{self.height} outside 16..4096 px")
        validate_request(None, self.shapes, self.colors, self.materials, self.sizes,
                         self.min_objects, self.max_objects)
        if self.negatives_per_image > self.ground_per_image:
            raise ValueError("more negative than grounding texts per image")


# -- one image ----------------------------------------------------------------------------------
_RENDERERS = {}


def _renderer(width, height, shadows=True):
    from essen_ros.data.render import Renderer
    key = (width, height, shadows)
    if key not in _RENDERERS:
        _RENDERERS[key] = Renderer(width, height, shadows=shadows)
    return _RENDERERS[key]


def image_name(index: int) -> str:
    return f"images/{index:06d}.png"


def make_example(config: GenerationConfig, index: int, out: Path | None):
    """Scene, render and texts of image `index`; saves the PNG; returns (items, scene dict)."""
    from essen_ros.data.language import generate
    from essen_ros.data.manifest import item_from_text, save_png
    from essen_ros.data.scene import relations, sample_scene

    rng = np.random.default_rng([config.seed, index])
    if config.vary_size:
        width, height = VARIED_SIZES[int(rng.integers(len(VARIED_SIZES)))]
    else:
        width, height = config.width, config.height
    scene_id = f"{index:06d}"
    scene = sample_scene(rng, shapes=config.shapes, colors=config.colors,
                         materials=config.materials, sizes=config.sizes,
                         min_objects=config.min_objects, max_objects=config.max_objects,
                         image_size=(width, height), scene_id=scene_id)
    result = _renderer(width, height, config.shadows).render(scene)
    rels = relations(scene.objects, result.camera)
    texts = generate(scene.objects, result.visible, rels, rng, n_ground=config.ground_per_image,
                     n_negative=config.negatives_per_image, n_vqa=config.vqa_per_image,
                     n_caption=config.captions_per_image)
    image = image_name(index)
    if out is not None and config.write_images:
        save_png(out / image, result.rgb)

    # `objects` of grounding items: the visible objects only, so every listed object is one
    # a person can point at; scenes.jsonl keeps all of them.
    shown = [i for i, v in enumerate(result.visible) if v]
    listed = [{"box": result.boxes[i], "center": result.centers[i],
               **scene.objects[i].attributes(), "scene_index": i} for i in shown]
    items = [item_from_text(text, image, scene_id, listed, shown) for text in texts]

    graph = scene.to_dict()
    graph.update(image=image, image_size=[width, height], relations=rels)
    for i, obj in enumerate(graph["objects"]):
        obj.update(box=result.boxes[i], center=result.centers[i], pixels=result.pixels[i],
                   visible_fraction=result.visible_fraction[i], visible=result.visible[i])
    return items, graph


def _worker_job(args):
    """Runs in a worker: the example as ready-made JSON lines (cheaper to send than dicts)."""
    config, index, out = args
    items, graph = make_example(config, index, out)
    return ([item["task"] for item in items], [_json_line(item) for item in items],
            _json_line(graph))


def _json_line(value) -> str:
    return json.dumps(value, separators=(",", ":")) + "\n"


def _worker_init():
    # llvmpipe would otherwise start one raster thread per core in every worker.
    os.environ.setdefault("LP_NUM_THREADS", "1")


# -- the whole set ------------------------------------------------------------------------------
def generate_dataset(config: GenerationConfig, out, workers: int = 1, overwrite: bool = False,
                     progress: bool = True) -> dict:
    """Render `config.images` examples into `out`. Returns counts and timing."""
    from essen_ros.data.manifest import ANNOTATIONS, ManifestWriter

    config.validate()
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    out = Path(out)
    if (out / ANNOTATIONS).exists() and not overwrite:
        raise FileExistsError(f"{out / ANNOTATIONS} exists; use another --out or --overwrite")
    # Fail with the back-end hint before anything is written or any worker starts.
    from essen_ros.data.render import check_backend
    check_backend()
    out.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm
    counts = {"images": 0, "items": 0, "ground": 0, "vqa": 0, "caption": 0}
    start = time.perf_counter()
    jobs = ((config, i, out) for i in range(config.images))
    bar = tqdm(total=config.images, unit="img", disable=not progress, file=sys.stderr)
    with ManifestWriter(out, overwrite=overwrite) as writer:
        if workers == 1:
            results = map(_worker_job, jobs)
            pool = None
        else:
            import multiprocessing
            context = multiprocessing.get_context("spawn")  # no GL state inherited by fork
            _worker_init()
            pool = context.Pool(workers, initializer=_worker_init)
            results = pool.imap(_worker_job, jobs, chunksize=8)
        try:
            for tasks, item_lines, scene_line in results:
                writer.write_lines(item_lines, scene_line)
                for task in tasks:
                    counts[task] += 1
                counts["images"] += 1
                counts["items"] += len(tasks)
                bar.update(1)
        finally:
            bar.close()
            if pool is not None:
                pool.terminate()
                pool.join()
    counts["seconds"] = round(time.perf_counter() - start, 2)
    counts["images_per_second"] = round(counts["images"] / max(counts["seconds"], 1e-9), 1)
    return counts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="essen-datagen", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="dataset folder to create")
    p.add_argument("--images", type=int, help="number of images (with --from-clevr: at most this many scenes)")
    p.add_argument("--from-clevr", metavar="SCENES_JSON",
                   help="instead of rendering, write texts for CLEVR v1.0's own scenes "
                        "(CLEVR_v1.0/scenes/CLEVR_<split>_scenes.json; images referenced in place)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    p.add_argument("--width", type=int, default=480)
    p.add_argument("--height", type=int, default=320)
    p.add_argument("--vary-size", action="store_true",
                   help=f"draw each image's size from {', '.join(f'{w}x{h}' for w, h in VARIED_SIZES)}")
    p.add_argument("--no-shadows", action="store_true",
                   help="skip shadows: about twice as fast on a CPU, less CLEVR-like")
    p.add_argument("--min-objects", type=int, default=3)
    p.add_argument("--max-objects", type=int, default=MAX_OBJECTS)
    p.add_argument("--shapes", nargs="+", default=list(SHAPES))
    p.add_argument("--colors", nargs="+", default=list(COLORS))
    p.add_argument("--materials", nargs="+", default=list(MATERIALS))
    p.add_argument("--sizes", nargs="+", default=list(SIZES))
    p.add_argument("--ground", type=int, default=6, help="grounding texts per image")
    p.add_argument("--negatives", type=int, default=1, help="of which match nothing")
    p.add_argument("--vqa", type=int, default=8, help="questions per image")
    p.add_argument("--captions", type=int, default=2, help="captions per image (half mismatched)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing manifest")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--contact-sheet", action="store_true",
                   help="also write <out>/contact_sheet.png (images with boxes and texts)")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.from_clevr:
        from essen_ros.data.clevr import convert
        try:
            counts = convert(args.from_clevr, args.out, limit=args.images, seed=args.seed,
                             overwrite=args.overwrite, progress=not args.no_progress,
                             texts=(args.ground, args.negatives, args.vqa, args.captions))
        except (ValueError, FileExistsError, FileNotFoundError, RuntimeError) as error:
            print(f"essen-datagen: error: {error}", file=sys.stderr)
            return 2
        print(f"essen-datagen: wrote {counts['items']} items for {counts['scenes']} CLEVR scenes "
              f"to {args.out} ({counts['skipped_scenes']} skipped, camera fit rms <= "
              f"{counts['max_fit_rms_px']} px)")
        return 0
    if args.images is None:
        parser.error("--images is required (or --from-clevr)")
    config = GenerationConfig(
        images=args.images, seed=args.seed, width=args.width, height=args.height,
        vary_size=args.vary_size, shadows=not args.no_shadows, min_objects=args.min_objects, max_objects=args.max_objects,
        shapes=tuple(args.shapes), colors=tuple(args.colors), materials=tuple(args.materials),
        sizes=tuple(args.sizes), ground_per_image=args.ground,
        negatives_per_image=args.negatives, vqa_per_image=args.vqa,
        captions_per_image=args.captions)
    try:
        counts = generate_dataset(config, args.out, workers=args.workers,
                                  overwrite=args.overwrite, progress=not args.no_progress)
    except (ValueError, FileExistsError) as error:
        print(f"essen-datagen: error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # no OpenGL back-end (RendererUnavailable)
        print(f"essen-datagen: error: {error}", file=sys.stderr)
        return 3
    if args.contact_sheet:
        from essen_ros.data.contact_sheet import make_contact_sheet
        make_contact_sheet(args.out, Path(args.out) / "contact_sheet.png")
    print(f"essen-datagen: wrote {counts['images']} images, {counts['items']} items "
          f"({counts['ground']} ground, {counts['vqa']} vqa, {counts['caption']} caption) to "
          f"{args.out} in {counts['seconds']} s ({counts['images_per_second']} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
