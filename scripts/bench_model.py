#!/usr/bin/env python3
"""Benchmark a model config (not a test): parameters per part, CPU latency per 320x240 frame
with the text encoded once, and training throughput.

    .venv/bin/python scripts/bench_model.py [--config default] [--threads 2] [--frames 50]

Targets for the default config on the 2-core CPU: < 25 M parameters, < 25 ms per frame.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from essen_ros.model.essen import build_model  # noqa: E402
from essen_ros.model.predictor import Predictor  # noqa: E402


def latency(predictor: Predictor, frames: int) -> dict:
    rng = np.random.default_rng(0)
    text = predictor.encode_text("pick up the small red cube left of the sphere")
    images = [rng.integers(0, 255, (240, 320, 3), dtype=np.uint8) for _ in range(4)]
    for image in images:  # warm-up
        predictor.ground(predictor.encode_image(image), text)
    times, cpu = [], []
    for k in range(frames):
        start, start_cpu = time.perf_counter(), time.process_time()
        img = predictor.encode_image(images[k % len(images)])
        predictor.ground(img, text)
        times.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    # On a shared machine wall time includes waiting for a core; the minimum and the CPU time
    # per frame (summed over threads) tell what the model itself costs.
    return {"frame_ms_median": round(statistics.median(times), 2), "frame_ms_min": round(min(times), 2),
            "frame_ms_p90": round(sorted(times)[int(0.9 * len(times))], 2),
            "frame_cpu_ms_median": round(statistics.median(cpu), 2), "text_encode_ms": round(text.ms, 2)}


def training_throughput(model, batch_images: int, texts_per_image: int, steps: int) -> dict:
    w, h = model.config.input_size
    n_texts = batch_images * texts_per_image
    pixels = torch.randn(batch_images, 3, h, w)
    ids = torch.randint(1000, 5000, (n_texts, 12))
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    image_index = torch.arange(batch_images).repeat_interleave(texts_per_image)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        out = model(pixels, ids, mask, image_index)
        cells, boxes, found = model.ground(out)
        loss = cells.logsumexp(-1).mean() + boxes.mean() + found.mean() + model.heads.vqa(out["pooled"]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:  # first step includes allocator warm-up
            times.append(time.perf_counter() - start)
    per_step = statistics.median(times)
    return {"train_step_s": per_step, "train_texts_per_s": n_texts / per_step,
            "train_images_per_s": batch_images / per_step, "batch": f"{batch_images} images x {texts_per_image} texts"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="default", help="model config name or YAML path")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--batch-images", type=int, default=8)
    p.add_argument("--texts-per-image", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.config, pretrained=False)
    counts = model.parameter_counts()
    report = {"config": args.config, "threads": args.threads, "load_average_1min": os.getloadavg()[0],
              "params_M": {k: round(v / 1e6, 3) for k, v in counts.items()}}
    report.update(latency(Predictor(model), args.frames))
    if args.train_steps:
        report.update(training_throughput(model, args.batch_images, args.texts_per_image, args.train_steps))
    print(json.dumps(report, indent=1))
    report["load_average_after"] = os.getloadavg()[0]
    ok = counts["total"] < 25e6 and report["frame_ms_median"] < 25.0
    print(f"targets (< 25 M params, < 25 ms/frame): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
