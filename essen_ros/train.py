"""essen-train: train the ESsEN model (or the one-tower baseline) on manifest datasets.

    essen-train --config config/train_default.yaml --data DATA_DIR [--val VAL_DIR] --out runs/X
    essen-train ... --out runs/X --resume        # continue after an interruption
    torchrun --nproc_per_node 2 -m essen_ros.train ...   # several processes (gloo / NCCL)

Stages run in order (e.g. `pretrain`: ITM + MLM, then `finetune`: grounding + VQA). A batch
is B images x K texts of each image: the CNN runs once per image and each text is fused with
its image (`image_index`). Every stage has a step and/or minute budget, so a time-boxed run
ends cleanly with a checkpoint.

Output folder:
  last/        newest checkpoint + optimizer state (resume point), replaced atomically
  model/       the final checkpoint to ship (fp16 weights when `export_fp16`)
  log.csv      one row per logged step;  eval.jsonl: validation metrics per evaluation
  loss.png     loss and validation curves;  metrics.json: summary
Ctrl-C (SIGINT/SIGTERM) stops after the current step and writes last/; a second Ctrl-C
aborts at once, and last/ still holds the previous good checkpoint.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from essen_ros.model.config import ConfigError, ModelConfig, from_dict, load_model_config, read_yaml
from essen_ros.model.heads import attribute_targets

log = logging.getLogger("essen_ros.train")

TASKS = ("itm", "mlm", "ground", "vqa", "attr", "box")


# ======================================================================= configuration
@dataclass
class StageConfig:
    name: str = "finetune"
    tasks: dict = field(default_factory=lambda: {"ground": 1.0, "vqa": 1.0})  # loss weights
    steps: int = 0                  # 0: no step budget (then max_minutes or epochs must be set)
    epochs: float = 0.0             # alternative step budget: passes over the images
    max_minutes: float = 0.0        # 0: no time budget
    lr: float = 2e-4                # towers' learning rate
    head_lr_mult: float = 5.0       # fusion and heads learn this much faster (ESsEN: 5x)
    weight_decay: float = 0.01
    warmup: float = 0.05            # fraction of the stage
    schedule: str = "cosine"        # "cosine" or "linear" decay after warm-up
    mlm_prob: float = 0.15
    mismatch_prob: float = 0.5      # captions swapped with another image's (ITM negatives)
    grad_clip: float = 1.0


@dataclass
class AugmentConfig:
    enabled: bool = True
    color: float = 0.2              # brightness/contrast/saturation jitter amplitude
    zoom_in: float = 0.85           # crop down to this fraction (keeping every object inside)
    zoom_out: float = 1.2           # or pad up to this factor
    probability: float = 0.5        # of a geometric jitter per image


@dataclass
class TrainConfig:
    model: object = "model_default.yaml"   # model YAML (relative to this file or config/) or a mapping
    seed: int = 0
    batch_images: int = 8
    texts_per_image: int = 4
    num_workers: int = 0
    threads: int = 0                # torch threads per process; 0: cores / processes
    log_every: int = 10
    eval_every: int = 0             # steps between validations (0: only at stage ends)
    save_every_minutes: float = 5.0
    val_max_items: int = 400
    export_fp16: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    stages: list = field(default_factory=list)

    def validate(self) -> "TrainConfig":
        def need(cond, key, why):
            if not cond:
                raise ConfigError(f"train config: {key}: {why}")

        need(self.batch_images >= 1, "batch_images", "must be >= 1")
        need(self.texts_per_image >= 1, "texts_per_image", "must be >= 1")
        need(len(self.stages) >= 1, "stages", "at least one stage is needed")
        for i, stage in enumerate(self.stages):
            key = f"stages[{i}]"
            need(stage.steps > 0 or stage.max_minutes > 0 or stage.epochs > 0, key,
                 "needs a budget: steps, epochs or max_minutes")
            unknown = set(stage.tasks) - set(TASKS)
            need(not unknown, f"{key}.tasks", f"unknown task(s) {sorted(unknown)} (known: {', '.join(TASKS)})")
            need(any(float(w) > 0 for w in stage.tasks.values()), f"{key}.tasks", "no task has a weight > 0")
            need(stage.schedule in ("cosine", "linear"), f"{key}.schedule", "must be cosine or linear")
            need(stage.lr > 0, f"{key}.lr", "must be > 0")
        return self


def load_train_config(path: "str | Path") -> tuple[TrainConfig, ModelConfig]:
    """Both configs, fully checked (unknown keys, impossible shapes) before any work."""
    path = Path(path)
    data = read_yaml(path)
    stages = data.pop("stages", None)
    config = from_dict(TrainConfig, data)
    if not isinstance(stages, list):
        raise ConfigError(f"train config {path}: 'stages' must be a list of stages")
    config.stages = [from_dict(StageConfig, s, f"stages[{i}]") for i, s in enumerate(stages)]
    config.validate()
    model_source = config.model
    if isinstance(model_source, str):
        candidate = path.parent / model_source
        model_source = candidate if candidate.is_file() else model_source
    return config, load_model_config(model_source)


# ======================================================================= data
def read_items(folder: "str | Path") -> list[dict]:
    """Manifest items as plain dicts with absolute image paths."""
    folder = Path(folder).resolve()  # image paths below become absolute, whatever the cwd
    jsonl = folder if folder.suffix == ".jsonl" else folder / "annotations.jsonl"
    if not jsonl.is_file():
        raise FileNotFoundError(f"no manifest at {jsonl}")
    try:
        from essen_ros.data.manifest import read_manifest
    except ImportError:
        read_manifest = None
    items = []
    if read_manifest is not None:
        raw, report = read_manifest(jsonl)
        for item in raw:
            record = dataclasses.asdict(item) if dataclasses.is_dataclass(item) else dict(item)
            image_path = getattr(item, "image_path", None)  # resolved against the manifest's folder
            if image_path is not None:
                record["image"] = str(image_path() if callable(image_path) else image_path)
            items.append(record)
        if getattr(report, "skipped", 0):
            log.warning("%s", report)
    else:
        skipped = 0
        for line in jsonl.read_text().splitlines():
            try:
                item = json.loads(line)
                _ = item["image"], item["task"], item["text"]
                items.append(item)
            except (json.JSONDecodeError, KeyError, TypeError):
                skipped += 1
        if skipped:
            log.warning("manifest %s: %d lines skipped (bad JSON or missing fields)", jsonl, skipped)
    base = jsonl.parent
    for item in items:
        image = Path(item["image"])
        item["image"] = str(image if image.is_absolute() else base / image)
        if item.get("task") == "ground" and item.get("found") is None:
            item["found"] = item.get("box") is not None
    return items


def stage_uses(stage: StageConfig) -> set[str]:
    """Manifest tasks a stage trains on."""
    w = {k: float(v) for k, v in stage.tasks.items()}
    uses = set()
    if w.get("itm", 0) > 0 or w.get("mlm", 0) > 0:
        uses.add("caption")
    if w.get("ground", 0) > 0 or w.get("box", 0) > 0:
        uses.add("ground")
    if w.get("vqa", 0) > 0:
        uses.add("vqa")
    return uses


def group_by_image(items: list[dict], uses: set[str], answers=None) -> list[tuple[str, list[dict]]]:
    """(image path, its usable items). Sets without captions use found/not-found
    referring expressions as matching/mismatching captions for ITM/MLM. VQA items whose
    answer is outside the model's vocabulary are left out (and counted in the log)."""
    known = set(answers) if answers is not None else None
    unknown_answers = 0
    has_captions = any(it["task"] == "caption" for it in items)
    groups: dict[str, list[dict]] = {}
    for item in items:
        task = item["task"]
        if "caption" in uses and task == "caption":
            pass
        elif "caption" in uses and not has_captions and task == "ground":
            item = dict(item, task="caption", match=item.get("found") is not False, as_caption=True)
        elif task not in uses or task == "caption":
            continue
        if task == "vqa" and (item.get("answer") is None or (known is not None and item["answer"] not in known)):
            unknown_answers += 1
            continue
        groups.setdefault(item["image"], []).append(item)
    if unknown_answers:
        log.warning("%d VQA items left out: answer missing or not in the model's answer list", unknown_answers)
    return sorted(groups.items())


class Augmenter:
    """Training-only photometric and scale jitter; never flips (left/right relations)."""

    def __init__(self, config: AugmentConfig):
        self.config = config

    def __call__(self, image: np.ndarray, items: list[dict], rng: random.Random):
        """-> (image, dx, dy): the new image and the shift to add to every box."""
        c = self.config
        if not c.enabled:
            return image, 0.0, 0.0
        img = image.astype(np.float32)
        if c.color > 0:
            img = img * rng.uniform(1 - c.color, 1 + c.color)                      # brightness
            mean = img.mean()
            img = (img - mean) * rng.uniform(1 - c.color, 1 + c.color) + mean      # contrast
            grey = img.mean(axis=2, keepdims=True)
            img = (img - grey) * rng.uniform(1 - c.color, 1 + c.color) + grey      # saturation
        img = np.clip(img, 0, 255).astype(np.uint8)
        dx = dy = 0.0
        if rng.random() < c.probability:
            h, w = img.shape[:2]
            if rng.random() < 0.5 and c.zoom_out > 1.0:
                s = rng.uniform(1.0, c.zoom_out)
                canvas = np.full((int(h * s), int(w * s), 3), (124, 116, 104), np.uint8)
                dx, dy = rng.uniform(0, canvas.shape[1] - w), rng.uniform(0, canvas.shape[0] - h)
                canvas[int(dy):int(dy) + h, int(dx):int(dx) + w] = img
                img, dx, dy = canvas, float(int(dx)), float(int(dy))
            elif c.zoom_in < 1.0:
                boxes = [b for it in items for b in _item_boxes(it)]
                if boxes and all(it["task"] == "ground" or it.get("as_caption") for it in items):
                    # Crop only where every object stays inside: counts and relations keep.
                    ux0, uy0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
                    ux1, uy1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
                    s = rng.uniform(c.zoom_in, 1.0)
                    cw, ch = int(w * s), int(h * s)
                    lo_x, hi_x = max(0, math.ceil(ux1) - cw), min(w - cw, int(ux0))
                    lo_y, hi_y = max(0, math.ceil(uy1) - ch), min(h - ch, int(uy0))
                    if lo_x <= hi_x and lo_y <= hi_y:
                        x0, y0 = rng.randint(lo_x, hi_x), rng.randint(lo_y, hi_y)
                        img = img[y0:y0 + ch, x0:x0 + cw]
                        dx, dy = float(-x0), float(-y0)
        return np.ascontiguousarray(img), dx, dy


def _item_boxes(item: dict) -> list[list[float]]:
    boxes = [o["box"] for o in item.get("objects") or [] if o.get("box")]
    if item.get("box"):
        boxes.append(item["box"])
    return boxes


class ImageTextDataset(torch.utils.data.Dataset):
    """Index = (epoch, image index): one image, preprocessed, with up to K of its items."""

    def __init__(self, groups, model_config: ModelConfig, k: int, seed: int, augment: Augmenter | None):
        self.groups = groups
        self.input_size = tuple(model_config.input_size)
        self.answer_index = {a: i for i, a in enumerate(model_config.answers)}
        self.k = k
        self.seed = seed
        self.augment = augment

    def __len__(self):
        return len(self.groups)

    def __getitem__(self, key):
        from PIL import Image

        from essen_ros.model.preprocess import preprocess

        epoch, index = key
        rng = random.Random(f"{self.seed}-{epoch}-{index}")
        path, items = self.groups[index]
        items = rng.sample(items, min(self.k, len(items)))
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))
        dx, dy = 0.0, 0.0
        if self.augment is not None:
            image, dx, dy = self.augment(image, items, rng)
        pixels, letterbox = preprocess(image, self.input_size)
        in_w, in_h = self.input_size
        records = []
        for item in items:
            record = {"text": item["text"], "task": item["task"], "box": None, "found": False,
                      "answer": -100, "match": -100}
            if item["task"] == "ground":
                record["found"] = bool(item.get("found", True)) and item.get("box") is not None
                if record["found"]:
                    x0, y0, x1, y1 = letterbox.to_input([item["box"][0] + dx, item["box"][1] + dy,
                                                        item["box"][2] + dx, item["box"][3] + dy])
                    record["box"] = [x0 / in_w, y0 / in_h, x1 / in_w, y1 / in_h]
            elif item["task"] == "vqa":
                if item["answer"] not in self.answer_index:
                    continue
                record["answer"] = self.answer_index[item["answer"]]
            else:
                record["match"] = int(item.get("match") is not False)
            records.append(record)
        # Every visible object's attributes and box (from any grounding item's scene objects),
        # for the dense attribute aid.
        objects = next((it["objects"] for it in self.groups[index][1]
                        if it.get("objects") and any("color" in o for o in it["objects"])), [])
        obj_boxes, obj_attrs = [], []
        for obj, attrs in zip(objects, attribute_targets(objects)):
            if not obj.get("box"):
                continue
            bx0, by0, bx1, by1 = letterbox.to_input([obj["box"][0] + dx, obj["box"][1] + dy,
                                                     obj["box"][2] + dx, obj["box"][3] + dy])
            obj_boxes.append([bx0 / in_w, by0 / in_h, bx1 / in_w, by1 / in_h])
            obj_attrs.append(attrs)
        return {"key": tuple(key), "pixels": pixels, "records": records,
                "obj_boxes": obj_boxes, "obj_attrs": obj_attrs}


def epoch_batches(n_images: int, batch_images: int, epoch: int, seed: int, rank: int, world: int) -> list[list]:
    """This rank's batches of (epoch, image index) for one epoch; every rank gets the same
    number of batches so collective operations stay in step."""
    order = list(range(n_images))
    random.Random(f"{seed}-order-{epoch}").shuffle(order)
    per_rank = len(order) // world
    mine = order[rank * per_rank:(rank + 1) * per_rank] if world > 1 else order
    n_batches = max(1, len(mine) // batch_images) if len(mine) >= batch_images else (1 if mine else 0)
    return [[(epoch, i) for i in mine[b * batch_images:(b + 1) * batch_images]] for b in range(n_batches)]


class Collator:
    def __init__(self, tokenizer, model_config: ModelConfig, stage: StageConfig, seed: int):
        self.tokenizer = tokenizer
        self.max_tokens = model_config.text.max_tokens
        self.stage = stage
        self.seed = seed
        self.mlm = float(stage.tasks.get("mlm", 0)) > 0
        self.special = set(tokenizer.all_special_ids)

    def __call__(self, samples):
        # Seeded by the batch content keys, so a batch is the same whichever process builds it.
        rng = random.Random(f"{self.seed}-collate-{[s['key'] for s in samples]}")
        pixels = torch.stack([s["pixels"] for s in samples])
        records, image_index = [], []
        for i, s in enumerate(samples):
            for r in s["records"]:
                records.append(dict(r))
                image_index.append(i)
        # ITM negatives: swap a caption for one from another image in the batch.
        if len(samples) > 1:
            captions = [(j, r["text"]) for j, r in enumerate(records) if r["task"] == "caption"]
            for j, r in enumerate(records):
                if r["task"] == "caption" and rng.random() < self.stage.mismatch_prob:
                    others = [text for k, text in captions if image_index[k] != image_index[j]]
                    if others:
                        r["text"], r["match"] = rng.choice(others), 0
        enc = self.tokenizer([r["text"] for r in records], padding=True, truncation=True,
                             max_length=self.max_tokens, return_tensors="pt")
        ids = enc["input_ids"]
        mlm_labels = torch.full_like(ids, -100)
        if self.mlm:
            for j, r in enumerate(records):
                if r["task"] != "caption" or r["match"] != 1:
                    continue
                for t in range(ids.shape[1]):
                    token = int(ids[j, t])
                    if token in self.special or rng.random() >= self.stage.mlm_prob:
                        continue
                    mlm_labels[j, t] = token
                    roll = rng.random()
                    if roll < 0.8:
                        ids[j, t] = self.tokenizer.mask_token_id
                    elif roll < 0.9:
                        ids[j, t] = rng.randrange(1000, self.tokenizer.vocab_size)
        tasks = [r["task"] for r in records]
        obj_image = [i for i, s in enumerate(samples) for _ in s.get("obj_boxes", [])]
        obj_boxes = [b for s in samples for b in s.get("obj_boxes", [])]
        obj_attrs = [a for s in samples for a in s.get("obj_attrs", [])]
        return {
            "obj_image": torch.tensor(obj_image, dtype=torch.long),
            "obj_boxes": torch.tensor(obj_boxes, dtype=torch.float32).reshape(-1, 4),
            "obj_attrs": torch.tensor(obj_attrs, dtype=torch.long).reshape(-1, 4),
            "pixels": pixels, "input_ids": ids, "attention_mask": enc["attention_mask"],
            "image_index": torch.tensor(image_index), "mlm_labels": mlm_labels,
            "is_ground": torch.tensor([t == "ground" for t in tasks]),
            "is_vqa": torch.tensor([t == "vqa" for t in tasks]),
            "is_caption": torch.tensor([t == "caption" for t in tasks]),
            "found": torch.tensor([r["found"] for r in records]),
            "box": torch.tensor([r["box"] or [0.0, 0.0, 0.0, 0.0] for r in records], dtype=torch.float32),
            "answer": torch.tensor([r["answer"] for r in records]),
            "match": torch.tensor([r["match"] for r in records]),
        }


# ======================================================================= losses
def compute_losses(model, batch: dict, weights: dict) -> dict[str, torch.Tensor]:
    """Weighted losses of the tasks present in the batch; 'total' is their sum."""
    from essen_ros.model.heads import grounding_loss

    out = model(batch["pixels"], batch["input_ids"], batch["attention_mask"], batch["image_index"])
    losses: dict[str, torch.Tensor] = {}
    pooled = out["pooled"]
    if weights.get("itm", 0) > 0 and bool((batch["match"] >= 0).any()):
        rows = batch["match"] >= 0
        losses["itm"] = F.cross_entropy(model.heads.itm(pooled[rows]), batch["match"][rows])
    if weights.get("mlm", 0) > 0 and bool((batch["mlm_labels"] >= 0).any()):
        where = batch["mlm_labels"] >= 0
        logits = model.heads.mlm(out["text"][where])  # only masked positions reach the vocab
        losses["mlm"] = F.cross_entropy(logits, batch["mlm_labels"][where])
    want_boxes = weights.get("box", 0) > 0 and len(batch.get("obj_image", ()))
    if (weights.get("ground", 0) > 0 or want_boxes) and bool(batch["is_ground"].any()):
        rows = batch["is_ground"]
        cell_logits, boxes, found_logit = model.heads.grounding(out["image"][rows], pooled[rows], out["grid"])
        if weights.get("ground", 0) > 0:
            losses["ground"] = grounding_loss(cell_logits, boxes, found_logit, batch["box"][rows],
                                              batch["found"][rows], out["grid"])
        if want_boxes:
            from essen_ros.model.heads import object_box_loss

            losses["box"] = object_box_loss(boxes, batch["image_index"][rows], batch["obj_image"],
                                            batch["obj_boxes"], out["grid"])
    if weights.get("attr", 0) > 0 and len(batch.get("obj_image", ())) and "image_tokens" in out:
        from essen_ros.model.heads import attribute_loss, target_cells

        cells = target_cells(batch["obj_boxes"], out["grid"])
        tokens = out["image_tokens"][batch["obj_image"], 1 + cells]
        losses["attr"] = attribute_loss(model.heads.attributes(tokens), batch["obj_attrs"])
    if weights.get("vqa", 0) > 0 and bool(batch["is_vqa"].any()):
        rows = batch["is_vqa"]
        losses["vqa"] = F.cross_entropy(model.heads.vqa(pooled[rows]), batch["answer"][rows])
    total = sum(float(weights[k]) * v for k, v in losses.items())
    losses["total"] = total if losses else pooled.sum() * 0.0
    return losses


class LossModule(torch.nn.Module):
    """Model + losses as one forward, so DistributedDataParallel sees every head's use."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, weights: dict) -> dict:
        return compute_losses(self.model, batch, weights)


# ======================================================================= validation
@torch.no_grad()
def evaluate(model, items: list[dict], max_items: int, device) -> dict:
    """Grounding acc@IoU0.5 (found targets), found accuracy, VQA accuracy, through the
    Predictor: the same path as the node."""
    from PIL import Image

    from essen_ros.metrics import iou
    from essen_ros.model.predictor import Predictor

    was_training = model.training
    predictor = Predictor(model, device=device)
    items = [it for it in items if it["task"] in ("ground", "vqa")][:max_items]
    by_image: dict[str, list[dict]] = {}
    for it in items:
        by_image.setdefault(it["image"], []).append(it)
    hits = n_ground = found_ok = n_found_items = vqa_ok = n_vqa = 0
    for path, group in by_image.items():
        with Image.open(path) as im:
            img = predictor.encode_image(np.asarray(im.convert("RGB")))
        for it in group:
            if not str(it.get("text") or "").strip():
                continue
            text = predictor.encode_text(it["text"])
            if it["task"] == "ground":
                g = predictor.ground(img, text)
                truly_found = bool(it.get("found", True)) and it.get("box") is not None
                n_found_items += 1
                found_ok += int(g.found == truly_found)
                if truly_found:
                    n_ground += 1
                    hits += int(iou(g.box_xyxy, it["box"]) >= 0.5)
            elif it.get("answer") is not None:
                n_vqa += 1
                vqa_ok += int(predictor.answer(img, text).answer == it["answer"])
    model.train(was_training)
    result = {}
    if n_ground:
        result["ground_acc_iou50"] = hits / n_ground
    if n_found_items:
        result["found_acc"] = found_ok / n_found_items
    if n_vqa:
        result["vqa_acc"] = vqa_ok / n_vqa
    result["val_items"] = len(items)
    return result


# ======================================================================= schedule, optimizer
def lr_factor(progress: float, stage: StageConfig) -> float:
    if stage.warmup > 0 and progress < stage.warmup:
        return max(progress / stage.warmup, 1e-3)
    rest = (progress - stage.warmup) / max(1e-9, 1.0 - stage.warmup)
    rest = min(max(rest, 0.0), 1.0)
    if stage.schedule == "linear":
        return max(1.0 - rest, 0.0)
    return 0.5 * (1.0 + math.cos(math.pi * rest))


def make_optimizer(model, stage: StageConfig) -> torch.optim.Optimizer:
    """AdamW: towers at lr, fusion and heads at lr * head_lr_mult; no decay on norms/biases."""
    towers = ("image_tower.", "text_tower.", "patches.", "words.")
    groups = {(t, d): [] for t in (True, False) for d in (True, False)}
    seen = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        is_tower = name.startswith(towers)
        decay = p.ndim >= 2 and "embedding" not in name.lower()
        groups[(is_tower, decay)].append(p)
    param_groups = []
    for (is_tower, decay), params in groups.items():
        if params:
            lr = stage.lr * (1.0 if is_tower else stage.head_lr_mult)
            param_groups.append({"params": params, "lr": lr, "base_lr": lr,
                                 "weight_decay": stage.weight_decay if decay else 0.0})
    return torch.optim.AdamW(param_groups, lr=stage.lr)


def optimizer_tensors(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state split into tensors (safetensors) and JSON: no pickle on resume."""
    state = optimizer.state_dict()
    tensors = {}
    for index, slots in state["state"].items():
        for key, value in slots.items():
            tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous() if torch.is_tensor(value) \
                else torch.tensor(value)
    groups = [{k: v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups}


def restore_optimizer(optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for name, value in tensors.items():
        if not name.startswith("state."):
            continue
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ======================================================================= run folder
def save_training_state(out: Path, model, optimizer, progress: dict, metrics: dict) -> None:
    """out/last: the model checkpoint plus what resuming needs, replaced atomically."""
    from safetensors.torch import save_file

    from essen_ros.model.checkpoint import atomic_folder, write_checkpoint_files

    core = model.module if hasattr(model, "module") else model
    with atomic_folder(out / "last") as tmp:
        write_checkpoint_files(tmp, core, metrics)
        tensors, meta = optimizer_tensors(optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "train_state.json").write_text(json.dumps({**progress, "optimizer": meta}, indent=1))


def load_training_state(out: Path):
    """(progress dict, optimizer tensors, optimizer meta) from out/last, or an error naming it."""
    from safetensors.torch import load_file

    last = out / "last"
    try:
        state = json.loads((last / "train_state.json").read_text())
        tensors = load_file(str(last / "optimizer.safetensors"))
    except (OSError, json.JSONDecodeError, ValueError) as err:
        raise SystemExit(f"essen-train: cannot resume from {last}: {err}") from err
    return state, tensors, state.pop("optimizer")


class RunLog:
    FIELDS = ["stage", "step", "global_step", "epoch", "loss", "itm", "mlm", "ground", "vqa", "attr", "box",
              "lr", "samples_per_s", "elapsed_s"]

    def __init__(self, out: Path, resume: bool):
        self.csv_path = out / "log.csv"
        self.eval_path = out / "eval.jsonl"
        if not resume:
            for p in (self.csv_path, self.eval_path):
                p.unlink(missing_ok=True)
        new = not self.csv_path.exists()
        # A resumed run keeps the columns its log was started with (older runs lack some).
        self.fields = self.FIELDS if new else (open(self.csv_path).readline().strip().split(",") or self.FIELDS)
        self.csv_file = open(self.csv_path, "a", newline="")
        self.writer = csv.DictWriter(self.csv_file, fieldnames=self.fields)
        if new:
            self.writer.writeheader()

    def row(self, **values):
        self.writer.writerow({k: values.get(k, "") for k in self.fields})
        self.csv_file.flush()

    def evaluation(self, record: dict):
        with open(self.eval_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def close(self):
        self.csv_file.close()


def plot_run(out: Path) -> Path | None:
    """loss.png: training loss (smoothed) per step, validation metrics on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(out / "log.csv"))) if (out / "log.csv").exists() else []
    if not rows:
        return None
    evals = [json.loads(l) for l in open(out / "eval.jsonl")] if (out / "eval.jsonl").exists() else []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = [int(r["global_step"]) for r in rows]
    for key in ("loss", "itm", "mlm", "ground", "vqa", "attr", "box"):
        pts = [(s, float(r[key])) for s, r in zip(steps, rows) if r.get(key) not in ("", None)]
        if pts:
            ax.plot(*zip(*pts), label=key, lw=1.5 if key == "loss" else 0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend(loc="upper left", fontsize=8)
    if evals:
        ax2 = ax.twinx()
        for key in ("ground_acc_iou50", "found_acc", "vqa_acc"):
            pts = [(e["global_step"], e[key]) for e in evals if key in e]
            if pts:
                ax2.plot(*zip(*pts), "o--", label=f"val {key}")
        ax2.set_ylabel("validation")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="upper right", fontsize=8)
    ax.set_title(out.name)
    fig.tight_layout()
    tmp = out / ".loss.png.tmp"
    fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    os.replace(tmp, out / "loss.png")
    return out / "loss.png"


# ======================================================================= distributed
def setup_distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def any_rank(flag: bool, world: int, device) -> bool:
    """True when the flag is set on any process (stop decisions must be shared)."""
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(value: float, world: int, device) -> float:
    if world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], device=device)
    dist.all_reduce(t)
    return float(t.item()) / world


class StopFlag:
    """First SIGINT/SIGTERM: finish the step, save, exit. Second: abort immediately."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def install(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nessen-train: {signal.Signals(signum).name} received: stopping after this step "
              "and saving (again to abort)", file=sys.stderr, flush=True)

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ======================================================================= training
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def stage_steps(stage: StageConfig, n_batches_per_epoch: int) -> int:
    """Step budget of a stage (0 = time budget only)."""
    steps = stage.steps
    if stage.epochs > 0:
        by_epochs = max(1, int(round(stage.epochs * n_batches_per_epoch)))
        steps = min(steps, by_epochs) if steps else by_epochs
    return steps


def train(config: TrainConfig, model_config: ModelConfig, data: Path, out: Path,
          val: Path | None = None, resume: bool = False, init: Path | None = None) -> dict:
    """Run the config's stages. `init`: start from that trained checkpoint's weights (its
    model config replaces `model_config`) instead of the pretrained towers."""
    from tqdm import tqdm

    from essen_ros.model.checkpoint import load_model, save_checkpoint
    from essen_ros.model.essen import build_model, parameter_summary

    rank, world, device = setup_distributed()
    is_main = rank == 0
    threads = config.threads or max(1, (os.cpu_count() or 1) // world)
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)

    items = read_items(data)
    val_items = read_items(val) if val else []
    if resume:
        progress, opt_tensors, opt_meta = load_training_state(out)
        model = load_model(out / "last")
        model.train()
        log.info("resuming from %s at stage %d step %d", out / "last", progress["stage_index"], progress["stage_step"])
    else:
        progress, opt_tensors, opt_meta = {"stage_index": 0, "stage_step": 0, "global_step": 0,
                                           "epoch": 0, "batch_in_epoch": 0, "elapsed_s": 0.0,
                                           "stage_elapsed_s": 0.0, "evaluations": []}, None, None
        seed_everything(config.seed)
        model = load_model(init) if init is not None else build_model(model_config, pretrained=True)
        if init is not None:
            model.train()
            log.info("starting from the weights of %s (its model config; the train config's model is not used)", init)
    model_config = model.config
    if is_main:
        log.info("model: %s", parameter_summary(model))
    model.to(device)
    tokenizer = model.tokenizer
    loss_module = LossModule(model)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # find_unused_parameters: a stage trains only some heads.
        loss_module = DistributedDataParallel(loss_module, device_ids=[device.index] if device.type == "cuda" else None,
                                            find_unused_parameters=True)

    stop = StopFlag()
    stop.install()
    run_log = RunLog(out, resume) if is_main else None
    start_time = time.monotonic() - float(progress["elapsed_s"])
    last_save = time.monotonic()
    final_metrics: dict = {}
    interrupted = False
    try:
        for stage_index in range(progress["stage_index"], len(config.stages)):
            stage = config.stages[stage_index]
            weights = {k: float(v) for k, v in stage.tasks.items()}
            groups = group_by_image(items, stage_uses(stage), model_config.answers)
            if not groups:
                raise SystemExit(f"essen-train: stage {stage.name!r} needs {sorted(stage_uses(stage))} "
                                 f"items and {data} has none")
            augment = Augmenter(config.augment) if config.augment.enabled else None
            dataset = ImageTextDataset(groups, model_config, config.texts_per_image, config.seed + stage_index, augment)
            collate = Collator(tokenizer, model_config, stage, config.seed + stage_index)
            per_epoch = len(epoch_batches(len(groups), config.batch_images, 0, config.seed, rank, world))
            total_steps = stage_steps(stage, per_epoch)
            optimizer = make_optimizer(model, stage)
            resuming_here = resume and stage_index == progress["stage_index"] and opt_tensors is not None
            if resuming_here:
                restore_optimizer(optimizer, opt_tensors, opt_meta)
                if "rng.torch" in opt_tensors:
                    torch.set_rng_state(opt_tensors["rng.torch"].to(torch.uint8))
            else:
                progress.update(stage_index=stage_index, stage_step=0, epoch=0, batch_in_epoch=0, stage_elapsed_s=0.0)
            stage_start = time.monotonic() - float(progress["stage_elapsed_s"])
            if is_main:
                log.info("stage %s: %d images, %s steps, %s minutes, tasks %s", stage.name, len(groups),
                         total_steps or "-", stage.max_minutes or "-", weights)
            bar = tqdm(total=total_steps or None, initial=progress["stage_step"], desc=stage.name,
                       disable=not is_main, dynamic_ncols=True, mininterval=1.0)
            window_samples, window_start = 0, time.monotonic()
            stage_done = False
            while not stage_done:
                batches = epoch_batches(len(groups), config.batch_images, progress["epoch"], config.seed, rank, world)
                skip = progress["batch_in_epoch"]
                loader = torch.utils.data.DataLoader(
                    dataset, batch_sampler=batches[skip:], collate_fn=collate,
                    num_workers=config.num_workers, persistent_workers=False)
                for batch in loader:
                    batch = to_device(batch, device)
                    elapsed_stage = time.monotonic() - stage_start
                    # The schedule follows whichever budget is nearer its end, so a time-boxed
                    # stage still warms up and decays fully (steps only: deterministic).
                    frac = progress["stage_step"] / total_steps if total_steps else 0.0
                    if stage.max_minutes > 0:
                        frac = max(frac, elapsed_stage / (60.0 * stage.max_minutes))
                    factor = lr_factor(frac, stage)
                    for group in optimizer.param_groups:
                        group["lr"] = group["base_lr"] * factor
                    losses = loss_module(batch, weights)
                    optimizer.zero_grad(set_to_none=True)
                    losses["total"].backward()
                    if stage.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), stage.grad_clip)
                    optimizer.step()

                    progress["stage_step"] += 1
                    progress["global_step"] += 1
                    progress["batch_in_epoch"] += 1
                    window_samples += int(batch["input_ids"].shape[0]) * world
                    progress["elapsed_s"] = time.monotonic() - start_time
                    progress["stage_elapsed_s"] = time.monotonic() - stage_start
                    loss_value = float(losses["total"].detach())
                    if not math.isfinite(loss_value):
                        raise SystemExit(f"essen-train: loss is {loss_value} at step {progress['global_step']}; "
                                         f"last good checkpoint: {out / 'last'}")
                    bar.update(1)
                    if progress["stage_step"] % config.log_every == 0 or progress["stage_step"] == 1:
                        rate = window_samples / max(1e-6, time.monotonic() - window_start)
                        bar.set_postfix(loss=f"{loss_value:.3f}", samples_s=f"{rate:.1f}")
                        if is_main:
                            run_log.row(stage=stage.name, step=progress["stage_step"], global_step=progress["global_step"],
                                        epoch=progress["epoch"], loss=f"{loss_value:.5f}", lr=f"{stage.lr * factor:.3g}",
                                        samples_per_s=f"{rate:.2f}", elapsed_s=f"{progress['elapsed_s']:.1f}",
                                        **{k: f"{float(v.detach()):.5f}" for k, v in losses.items() if k in TASKS})
                        window_samples, window_start = 0, time.monotonic()

                    out_of_steps = bool(total_steps) and progress["stage_step"] >= total_steps
                    out_of_time = stage.max_minutes > 0 and progress["stage_elapsed_s"] >= 60.0 * stage.max_minutes
                    stage_done = any_rank(out_of_steps or out_of_time, world, device)
                    interrupted = any_rank(stop.requested, world, device)
                    want_eval = config.eval_every and progress["global_step"] % config.eval_every == 0
                    want_save = time.monotonic() - last_save >= 60.0 * config.save_every_minutes
                    if stage_done or interrupted or want_eval or want_save:
                        if is_main and val_items and (stage_done or want_eval) and not interrupted:
                            result = evaluate(model, val_items, config.val_max_items, device)
                            result.update(stage=stage.name, global_step=progress["global_step"])
                            progress["evaluations"].append(result)
                            run_log.evaluation(result)
                            bar.write(f"validation @ {progress['global_step']}: {result}")
                        if is_main:
                            save_training_state(out, model, optimizer, progress,
                                                {"data": str(data), "progress": {k: v for k, v in progress.items()
                                                                                  if k != "evaluations"}})
                            last_save = time.monotonic()
                        barrier(world)
                    if stage_done or interrupted:
                        break
                else:
                    progress["epoch"] += 1
                    progress["batch_in_epoch"] = 0
                if interrupted:
                    break
            bar.close()
            if interrupted:
                break
        if is_main:
            final_metrics = {
                "data": str(data), "val": str(val) if val else None, "init": str(init) if init else None,
                "world_size": world, "device": str(device),
                "steps": progress["global_step"], "train_minutes": round(progress["elapsed_s"] / 60, 2),
                "completed": not interrupted, "seed": config.seed,
                "stages": [dataclasses.asdict(s) for s in config.stages],
                "validation": progress["evaluations"][-1] if progress["evaluations"] else {},
                "evaluations": progress["evaluations"],
            }
            if not interrupted:
                save_checkpoint(model, out / "model", final_metrics, fp16=config.export_fp16)
            (out / ".metrics.json.tmp").write_text(json.dumps(final_metrics, indent=1, default=str))
            os.replace(out / ".metrics.json.tmp", out / "metrics.json")
            plot_run(out)
    finally:
        stop.restore()
        if run_log is not None:
            run_log.close()
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    if interrupted:
        raise KeyboardInterrupt
    return final_metrics


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# ======================================================================= CLI
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="essen-train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training YAML (stages; names the model YAML)")
    p.add_argument("--data", required=True, help="training manifest folder (annotations.jsonl)")
    p.add_argument("--val", help="validation manifest folder (metrics per evaluation)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, plot)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last")
    p.add_argument("--seed", type=int, help="override the config's seed")
    p.add_argument("--max-minutes", type=float, help="override every stage's time budget")
    p.add_argument("--steps", type=int, help="override every stage's step budget")
    p.add_argument("--threads", type=int, help="override the config's torch threads per process")
    p.add_argument("--init", help="start from this trained checkpoint folder (e.g. models/essen-default) "
                                  "instead of the pretrained towers: fine-tune it on your own data")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # data workers are forked
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config, model_config = load_train_config(args.config)
    except ConfigError as err:
        print(f"essen-train: {err}", file=sys.stderr)
        return 2
    if args.seed is not None:
        config.seed = args.seed
    for flag, value in (("--threads", args.threads), ("--steps", args.steps), ("--max-minutes", args.max_minutes)):
        if value is not None and not value > 0:  # 0 would mean "no budget": a run that never ends
            print(f"essen-train: {flag} must be > 0, got {value}", file=sys.stderr)
            return 2
    if args.threads is not None:
        config.threads = args.threads
    for stage in config.stages:
        if args.max_minutes is not None:
            stage.max_minutes = args.max_minutes
        if args.steps is not None:
            stage.steps, stage.epochs = args.steps, 0.0
    data, out = Path(args.data), Path(args.out)
    val = Path(args.val) if args.val else None
    for name, folder in (("--data", data), ("--val", val)):
        if folder is not None and not (folder / "annotations.jsonl").is_file() and folder.suffix != ".jsonl":
            print(f"essen-train: {name} {folder}: no annotations.jsonl there", file=sys.stderr)
            return 2
    init = Path(args.init) if args.init else None
    if init is not None:
        if args.resume:
            print("essen-train: --init and --resume exclude each other (a resumed run has its own weights)",
                  file=sys.stderr)
            return 2
        from essen_ros.model.checkpoint import CheckpointError, load_model

        try:
            load_model(init)  # checked before anything is written
        except CheckpointError as err:
            print(f"essen-train: --init: {' '.join(str(err).split())}", file=sys.stderr)  # one line
            return 2
    if args.resume and not (out / "last" / "train_state.json").is_file():
        print(f"essen-train: --resume: no resumable checkpoint at {out / 'last'}", file=sys.stderr)
        return 2
    if not args.resume and (out / "last").exists():
        print(f"essen-train: {out} already holds a run; use --resume or another --out", file=sys.stderr)
        return 2
    try:
        metrics = train(config, model_config, data, out, val, resume=args.resume, init=init)
    except KeyboardInterrupt:
        print(f"essen-train: interrupted; last good checkpoint in {out / 'last'} (continue with --resume)",
              file=sys.stderr)
        return 130
    if metrics:
        print(json.dumps({"out": str(out), "steps": metrics["steps"], "minutes": metrics["train_minutes"],
                          "validation": metrics["validation"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
