#!/usr/bin/env python3
"""Benchmark essen-datagen: images/second end to end (render + labels + PNG + manifest).

    .venv/bin/python scripts/bench_datagen.py --images 200 --width 320 --height 240

Prints, per worker count, wall-clock images/s and CPU milliseconds per image (user + system
time of all processes). On a shared machine the wall rate depends on what else runs; CPU ms
per image does not, and `2 cores / cpu_ms` is the rate this machine would reach if idle.
A per-stage breakdown (one process) shows where the time goes.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("LP_NUM_THREADS", "1")   # as in the generator's worker processes
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from essen_ros.datagen import GenerationConfig, _renderer, generate_dataset  # noqa: E402


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def stages(config: GenerationConfig, count: int) -> dict:
    """Mean milliseconds per image of each stage, in this process."""
    from essen_ros.data.language import generate
    from essen_ros.data.manifest import save_png
    from essen_ros.data.scene import relations, sample_scene
    renderer = _renderer(config.width, config.height, config.shadows)
    totals = dict.fromkeys(("scene", "render", "language", "png"), 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count):
            rng = np.random.default_rng([config.seed, i])
            t0 = time.process_time()
            scene = sample_scene(rng, image_size=(config.width, config.height))
            t1 = time.process_time()
            result = renderer.render(scene)
            t2 = time.process_time()
            generate(scene.objects, result.visible, relations(scene.objects, result.camera), rng)
            t3 = time.process_time()
            save_png(Path(tmp) / f"{i}.png", result.rgb)
            t4 = time.process_time()
            for key, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                totals[key] += dt
    return {k: 1000 * v / count for k, v in totals.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--no-shadows", action="store_true")
    args = p.parse_args()
    config = GenerationConfig(images=args.images, width=args.width, height=args.height,
                              shadows=not args.no_shadows)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} before start; "
          f"MUJOCO_GL={os.environ['MUJOCO_GL']}; {args.width}x{args.height}, {args.images} images, "
          f"shadows {'off' if args.no_shadows else 'on'}")
    breakdown = stages(config, min(40, args.images))
    print("per image, one process (CPU ms): " + ", ".join(f"{k} {v:.1f}" for k, v in breakdown.items())
          + f", total {sum(breakdown.values()):.1f}")
    for workers in args.workers:
        # A small run measures the fixed start-up (spawning workers, GL contexts); the
        # difference to the full run is the steady per-image cost that a long run sees.
        small = GenerationConfig(**{**config.__dict__, "images": 16 * workers})
        runs = []
        for run_config in (small, config):
            with tempfile.TemporaryDirectory() as tmp:
                cpu0, wall0 = cpu_seconds(), time.perf_counter()
                counts = generate_dataset(run_config, Path(tmp) / "set", workers=workers,
                                          progress=False)
                runs.append((counts, time.perf_counter() - wall0, cpu_seconds() - cpu0))
        (small_counts, small_wall, small_cpu), (counts, wall, cpu) = runs
        extra = counts["images"] - small_counts["images"]
        steady_cpu_ms = 1000 * (cpu - small_cpu) / extra
        steady_wall_rate = extra / max(wall - small_wall, 1e-9)
        cores = min(workers, os.cpu_count() or 1)
        print(f"workers {workers}: {counts['images'] / wall:.1f} images/s wall for "
              f"{counts['images']} images ({counts['items']} items), steady {steady_wall_rate:.1f} "
              f"images/s wall; steady CPU {steady_cpu_ms:.1f} ms/image -> "
              f"{1000 * cores / steady_cpu_ms:.1f} images/s on {cores} idle core(s); "
              f"start-up {small_cpu - small_counts['images'] * steady_cpu_ms / 1000:.1f} CPU s; "
              f"load average now {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
