#!/usr/bin/env python3
"""The paper's comparisons on this project's data, every variant with the same data and the
same training budget (steps x batch), then scored the same way:

  - two-tower (ESsEN, co-attention) vs the parameter-matched one-tower (ViLT-style) baseline;
  - fusion shapes: width/depth 256x2 (default), 128x4, 384x1, and merged attention;
  - pretrained towers vs towers from scratch.

    .venv/bin/python scripts/compare_models.py --data data/train --val data/val \
        --clevr ../shared/data/clevr-dev --steps 150 --out runs/compare

Writes runs/compare/results.json and a Markdown table (runs/compare/results.md; copy it
into docs/results.md). Each variant: fine-tuning (grounding + VQA, plus the attribute aid
with --attr and the object-box aid with --box) only, batch 4 images x 8 texts, from the same seed; scored on --val-items synthetic validation grounding
items and as many VQA items, and likewise --clevr-items of clevr-dev, through the Predictor
(the node's inference path). --rescore scores models trained by an earlier run again.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _model(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())


def variants() -> dict[str, dict]:
    base = _model("model_default.yaml")

    def with_fusion(width, depth, ffn):
        m = copy.deepcopy(base)
        m["fusion"].update(width=width, depth=depth, ffn=ffn)
        return m

    scratch = copy.deepcopy(base)
    scratch["image"]["pretrained"] = False
    scratch["text"]["init"] = "scratch"
    return {
        "two-tower 256x2 (default)": base,
        "one-tower (ViLT-style)": _model("model_onetower.yaml"),
        "two-tower 128x4": with_fusion(128, 4, 512),
        "two-tower 384x1": with_fusion(384, 1, 1536),
        "two-tower merged attention": _model("model_merged.yaml"),
        "two-tower from scratch": scratch,
    }


def train_config(model: dict, steps: int, lr: float, attr: float = 0.0, box: float = 0.0) -> dict:
    tasks = {"ground": 1.0, "vqa": 1.0, **({"attr": attr} if attr > 0 else {}), **({"box": box} if box > 0 else {})}
    return {"model": model, "seed": 0, "batch_images": 4, "texts_per_image": 8, "log_every": 10, "threads": 1,
            "eval_every": 0, "val_max_items": 1, "export_fp16": False,
            "stages": [{"name": "finetune", "tasks": tasks, "steps": steps,
                        "lr": lr, "head_lr_mult": 5.0, "warmup": 0.05}]}


def score(model_dir: Path, data: Path, limit: int) -> dict:
    from essen_ros.data.manifest import read_manifest
    from essen_ros.evaluate import evaluate_manifest
    from essen_ros.model.checkpoint import load_model
    from essen_ros.model.predictor import Predictor

    items, _ = read_manifest(data)
    chosen = []
    for task in ("ground", "vqa"):
        of_task = [i for i in items if getattr(i, "task", None) == task]
        step = max(1, len(of_task) // limit) if limit > 0 else 1
        chosen += of_task[::step][:limit] if limit > 0 else of_task   # spread over the whole set
    items = chosen
    results = evaluate_manifest(Predictor(load_model(model_dir)), items, data)
    m = results["metrics"]
    ground, vqa = m["grounding"], m["vqa"]
    return {"ground_iou50": ground["overall"]["acc_iou"], "ground_centre": ground["overall"]["acc_centre"],
            "ground_by_variant": {k: v["acc_iou"] for k, v in ground["by_variant"].items()},
            "vqa": vqa["overall"]["acc"], "vqa_by_kind": {k: v["acc"] for k, v in vqa["by_kind"].items()},
            "n_ground": ground["overall"]["n"], "n_vqa": vqa["overall"]["n"]}


def params(model_dir: Path) -> float:
    from essen_ros.model.checkpoint import load_model

    model = load_model(model_dir)
    return sum(p.numel() for p in model.parameters()) / 1e6


def pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def _save(results_path: Path, name: str, entry: dict) -> None:
    """Merge one variant's entry into results.json, re-reading it first (two runs with
    different --only may share one --out) and replacing it atomically."""
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results[name] = entry
    tmp = results_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(results_path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--val", type=Path, required=True)
    ap.add_argument("--clevr", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=1.5e-4)
    ap.add_argument("--val-items", type=int, default=600,
                    help="grounding items and VQA items each, spread over the set (0: all)")
    ap.add_argument("--clevr-items", type=int, default=600, help="likewise for --clevr")
    ap.add_argument("--attr", type=float, default=0.0,
                    help="weight of the attribute aid (the shipped recipe uses 0.5; default 0: "
                         "grounding + VQA only, as in the paper)")
    ap.add_argument("--box", type=float, default=0.0,
                    help="weight of the object-box aid (the shipped recipe uses 1.0; default 0)")
    ap.add_argument("--rescore", action="store_true",
                    help="score the models an earlier run of this command trained in --out again "
                         "(other --val-items/--clevr-items) instead of training them anew")
    ap.add_argument("--only", nargs="*", help="names (substring match) of variants to run")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "compare")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"

    for name, model in variants().items():
        if args.only and not any(s in name for s in args.only):
            continue
        slug = "".join(c if c.isalnum() else "_" for c in name).strip("_")
        run = args.out / slug
        cfg_path = args.out / f"{slug}.yaml"
        previous = json.loads(results_path.read_text()).get(name, {}) if results_path.is_file() else {}
        recipe = {"attr": args.attr, "box": args.box}
        if args.rescore and (run / "model" / "config.yaml").is_file() and "train_minutes" in previous:
            print(f"== {name}: scoring the model trained before in {run}", flush=True)
            minutes = previous["train_minutes"]
            recipe = {k: previous.get(k, 0.0) for k in recipe}   # as it was trained, not as asked now
        else:
            cfg_path.write_text(yaml.safe_dump(train_config(model, args.steps, args.lr, args.attr, args.box),
                                               sort_keys=False))
            print(f"== {name}: training {args.steps} steps -> {run}", flush=True)
            start = time.monotonic()
            r = subprocess.run([sys.executable, "-m", "essen_ros.train", "--config", str(cfg_path),
                                "--data", str(args.data), "--out", str(run)],
                               cwd=REPO, capture_output=True, text=True)
            minutes = round((time.monotonic() - start) / 60, 1)
            if r.returncode != 0:
                print(r.stdout[-2000:], r.stderr[-3000:], file=sys.stderr)
                _save(results_path, name,
                      {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed"})
                continue
        steps = json.loads((run / "model" / "metrics.json").read_text()).get("steps", args.steps)
        entry = {"params_m": round(params(run / "model"), 2), "steps": steps, **recipe,
                 "train_minutes": minutes, "val": score(run / "model", args.val, args.val_items)}
        if args.clevr:
            entry["clevr_dev"] = score(run / "model", args.clevr, args.clevr_items)
        _save(results_path, name, entry)
        print(json.dumps(entry), flush=True)

    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    order = list(variants())
    results = dict(sorted(results.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    lines = ["| variant | params | steps | train min | synthetic val grounding (centre) "
             "| synthetic val VQA | clevr-dev grounding (template / relational) | clevr-dev VQA |",
             "|---|---|---|---|---|---|---|---|"]
    for name, e in results.items():
        if "error" in e:
            lines.append(f"| {name} | failed: {e['error']} | | | | | | |")
            continue
        v, c = e["val"], e.get("clevr_dev", {})
        by = c.get("ground_by_variant", {})
        lines.append(f"| {name} | {e['params_m']:.1f} M | {e['steps']} | {e['train_minutes']} | "
                     f"{pct(v['ground_iou50'])} ({pct(v['ground_centre'])}) | {pct(v['vqa'])} | "
                     f"{pct(c.get('ground_iou50'))} ({pct(by.get('template'))} / "
                     f"{pct(by.get('relational'))}) | {pct(c.get('vqa'))} |")
    table = "\n".join(lines)
    (args.out / "results.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
