"""``essen-demo``: the main job end to end, on fresh scenes or on real CLEVR renders.

    essen-demo                          # render fresh scenes, make a bag, replay it live
    essen-demo --clevr ../shared/data/clevr-dev   # the same on CLEVR renders from a folder

Steps: (1) a dataset, either rendered now by the project's own scene generator (a new seed
each run unless --seed) or read from a folder (clevr-dev style ``annotations.jsonl``, or a
folder made by ``essen-datagen --from-clevr`` from a CLEVR v1.0 download); (2) a rosbag2 of
those images with the commands and questions on their topics (``essen-bag``); (3) the bag
replayed with its recorded timing through a freshly started ``essen-node`` over DDS;
(4) one line per command/question with the node's result and whether it was right, then the
scores and the report (``results.json``, ``summary.md``, PNG plots) under --out.
With --clevr, every item of the folder is also scored offline (``essen-eval --data``) so the
printed accuracy covers the whole set, not only the frames replayed live.
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from pathlib import Path

EXIT_USER_ERROR = 2


class DemoError(Exception):
    """Printed without a traceback; exit status 2."""


def _verdict(record: dict) -> tuple[str, str]:
    """(mark, what the node said) for one scored record."""
    from essen_ros import metrics

    if record.get("task") == "ground":
        verdict = metrics.score_grounding_item(record)
        ok = verdict["correct_iou"]
        if record.get("pred_found"):
            box = record.get("pred_box") or []
            said = f"found {record.get('pred_score', 0):.2f} box {[round(v) for v in box]}"
        else:
            said = f"not found ({record.get('pred_score', 0):.2f})"
        if record.get("true_found", True):
            truth = f"true box {[round(v) for v in record.get('true_box') or []]}"
            if record.get("pred_found") and not ok:
                truth += f", IoU {verdict['iou'] or 0:.2f}"
        else:
            truth = "truly absent"
    else:
        ok = record.get("pred_answer") == record.get("true_answer")
        said = f"'{record.get('pred_answer')}' ({record.get('pred_score', 0):.2f})"
        truth = f"true '{record.get('true_answer')}'"
    if record.get("pred_found") is None and record.get("pred_answer") is None:
        return "MISS", "no result from the node"
    return ("ok  " if ok else "WRONG"), f"{said}; {truth}"


def print_records(records: list[dict], out=sys.stdout) -> None:
    for record in records:
        if not record.get("labelled", True):
            continue  # a text still active on later frames: nothing to judge it by
        mark, said = _verdict(record)
        print(f"[{mark}] {record.get('text', '')!r:60} -> {said}", file=out)


def _fresh_scenes(out: Path, images: int, seed: int) -> tuple[list, Path]:
    from essen_ros.data.manifest import read_manifest
    from essen_ros.datagen import GenerationConfig, generate_dataset

    folder = out / "scenes"
    config = GenerationConfig(images=images, seed=seed, ground_per_image=3, negatives_per_image=1,
                              vqa_per_image=3, captions_per_image=0)
    generate_dataset(config, folder, workers=1, overwrite=True, progress=False)
    items, _ = read_manifest(folder)
    return items, folder


def _folder_items(path: Path) -> tuple[list, Path]:
    from essen_ros.data.manifest import read_manifest

    if not path.exists():
        raise DemoError(f"{path} does not exist: pass a folder with annotations.jsonl and its images "
                        "(clevr-dev style), or one made by `essen-datagen --from-clevr "
                        "CLEVR_v1.0/scenes/CLEVR_val_scenes.json --out DIR`")
    try:
        items, report = read_manifest(path)
    except (OSError, ValueError) as error:
        raise DemoError(f"cannot read {path}: {error}") from None
    if not items:
        raise DemoError(f"{path}: no usable items ({report})")
    root = path if path.is_dir() else path.parent
    return items, root


def _live_subset(items: list, frames: int, seed: int) -> list:
    """Items of a few images (all of each image's texts), for the live part."""
    from essen_ros.bagtool import item_to_dict

    records = [item_to_dict(i) for i in items]
    images = sorted({r["image"] for r in records})
    random.Random(seed).shuffle(images)
    chosen, kept, shown = set(), [], 0
    for image in images:
        mine = [r for r in records if r["image"] == image and r.get("task") in ("ground", "vqa")]
        per_task = max(sum(r["task"] == "ground" for r in mine), sum(r["task"] == "vqa" for r in mine), 1)
        if shown and shown + per_task > frames:
            break
        chosen.add(image)
        shown += per_task
        kept.extend(mine)
    return kept


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="essen-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clevr", type=Path, default=None,
                        help="folder of real CLEVR renders with annotations.jsonl (default: render fresh scenes)")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint folder (default: the shipped model)")
    parser.add_argument("--images", type=int, default=8, help="fresh scenes to render (default 8)")
    parser.add_argument("--frames", type=int, default=40,
                        help="with --clevr: frames replayed live through the node (default 40)")
    parser.add_argument("--seed", type=int, default=None, help="scene/selection seed (default: new each run)")
    parser.add_argument("--rate", type=float, default=1.0, help="replay speed factor (default 1.0)")
    parser.add_argument("--fps", type=float, default=4.0, help="frame rate written into the bag (default 4)")
    parser.add_argument("--encoding", default="rgb8", help="image encoding in the bag (default rgb8)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default reports/demo or reports/clevr)")
    return parser


def run(args) -> int:
    from essen_ros.bagtool import BagError, write_bag
    from essen_ros.evaluate import EvalError, format_summary, live_replay, write_report
    from essen_ros.paths import default_checkpoint

    model = args.model or default_checkpoint()
    if not (Path(model) / "config.yaml").is_file():
        raise DemoError(f"no model at {model} (config.yaml missing): pass --model PATH or set ESSEN_MODEL")
    seed = args.seed if args.seed is not None else int(time.time()) % 100000
    out = args.out or Path("reports") / ("clevr" if args.clevr else "demo")
    if args.images < 1 or args.frames < 1:
        raise DemoError("--images and --frames must be at least 1")
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()

    started = time.monotonic()
    if args.clevr:
        print(f"essen-demo: CLEVR renders from {args.clevr}, model {model}, seed {seed}", flush=True)
        items, root = _folder_items(args.clevr)
        live_items = _live_subset(items, args.frames, seed)
    else:
        print(f"essen-demo: {args.images} fresh scenes (seed {seed}), model {model}", flush=True)
        items, root = _fresh_scenes(work, args.images, seed)
        live_items = items
    bag = work / "bag"
    try:
        summary = write_bag(live_items, root, bag, encoding=args.encoding, fps=args.fps)
    except BagError as error:
        raise DemoError(str(error)) from None
    print(f"bag: {bag} ({getattr(summary, 'frames', '?')} frames at {args.fps} Hz, {args.encoding}); "
          "replaying live through essen-node ...", flush=True)
    try:
        results = live_replay(bag, checkpoint=model, rate=args.rate, progress=False)
    except (EvalError, BagError) as error:
        raise DemoError(str(error)) from None

    print()
    print_records(results.get("records", []))
    print()
    print(format_summary(results))
    paths = write_report(results, out / "live")
    print(f"live report: {paths.get('summary', out / 'live' / 'summary.md')}")

    if args.clevr:
        from essen_ros.evaluate import evaluate_manifest
        from essen_ros.model.checkpoint import load_model
        from essen_ros.model.predictor import Predictor

        print(f"\nscoring all {len(items)} items of {args.clevr} offline (same model, same preprocessing) ...",
              flush=True)
        offline = evaluate_manifest(Predictor(load_model(model)), items, root, progress=True)
        print(format_summary(offline))
        paths = write_report(offline, out / "offline")
        print(f"offline report: {paths.get('summary', out / 'offline' / 'summary.md')}")
    print(f"\nessen-demo finished in {time.monotonic() - started:.0f} s")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except DemoError as error:
        print(f"essen-demo: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("essen-demo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
