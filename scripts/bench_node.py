#!/usr/bin/env python3
"""Benchmark the perception node as a robot runs it: a separate essen-node process, a camera
publishing 320x240 rgb8 frames at 30 Hz over DDS, an active command.

    .venv/bin/python scripts/bench_node.py                    # default model, 60 s
    .venv/bin/python scripts/bench_node.py --duration 20 --checkpoint models/essen-default

Prints end-to-end latency (image stamp -> Grounding receipt, same host clock) p50/p95, the
node's overhead beyond the model's own forward time (latency - Grounding.inference_ms: DDS
both ways, image conversion, publishing), processed vs dropped frames (from the node's
diagnostics), and the node's resident memory over time (peak, and growth after warm-up).
Not a test: numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="",
                        help="checkpoint folder (default: the shipped model, else a random "
                             "tiny one made for the run)")
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument("--rate", type=float, default=30.0, help="camera frames per second")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--threads", type=int, default=0, help="node's num_threads parameter")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def choose_checkpoint(requested: str, scratch: Path) -> tuple[Path, str]:
    from essen_ros.paths import default_checkpoint

    if requested:
        return Path(requested), "given"
    shipped = default_checkpoint()
    if (shipped / "config.yaml").is_file():
        return shipped, "shipped default"
    from essen_ros.model.checkpoint import make_checkpoint

    return make_checkpoint(scratch / "tiny", "tiny"), "random tiny (no shipped model found)"


def camera_frames(width: int, height: int) -> list:
    """A few CLEVR renders when the shared data is there, else synthetic gradients."""
    import numpy as np
    from PIL import Image as PILImage

    frames = []
    data = REPO.parent / "shared" / "data" / "clevr-dev"
    for path in sorted(data.glob("images/*.png"))[:4] + sorted(data.glob("*.png"))[:4]:
        with PILImage.open(path) as picture:
            frames.append(np.asarray(picture.convert("RGB").resize((width, height))))
    if not frames:
        y, x = np.mgrid[0:height, 0:width]
        for k in range(4):
            frames.append(np.stack([(x + 40 * k) % 256, (y * 2) % 256, (x + y) % 256],
                                   axis=2).astype(np.uint8))
    return frames


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def percentile(values, q):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main(argv=None) -> int:
    args = parse_args(argv)
    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    from essen_ros.ros.dds import apply_default_profile

    apply_default_profile(env)
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    apply_default_profile()

    scratch = Path(tempfile.mkdtemp(prefix="essen-bench-"))
    checkpoint, origin = choose_checkpoint(args.checkpoint, scratch)
    print(f"checkpoint: {checkpoint} ({origin})", flush=True)

    node = subprocess.Popen(
        [sys.executable, "-m", "essen_ros.ros.node", "--ros-args", "-r", "__ns:=/bench",
         "-p", f"checkpoint:={checkpoint}", "-p", f"num_threads:={args.threads}"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    node_log: list[str] = []
    started = threading.Event()

    def read_node_output():
        for line in node.stdout:
            node_log.append(line)
            if re.search(r"\]: model .* from ", line):
                started.set()

    threading.Thread(target=read_node_output, daemon=True).start()
    try:
        return run(args, node, node_log, started)
    finally:
        if node.poll() is None:
            node.send_signal(2)
            try:
                node.wait(timeout=15)
            except subprocess.TimeoutExpired:
                node.kill()


def run(args, node, node_log, started) -> int:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from essen_ros.msg import Grounding
    from essen_ros.ros.image_conversion import rgb_to_image_msg

    if not started.wait(timeout=120):
        print("node did not start:\n" + "".join(node_log), file=sys.stderr)
        return 1
    print(node_log[-1].strip(), flush=True)

    rclpy.init()
    bench = rclpy.create_node("essen_bench")
    results = []        # (receipt_ns, stamp_ns, inference_ms)
    diagnostics = {}
    measuring = threading.Event()

    def on_grounding(msg):
        now = time.time_ns()
        if measuring.is_set():
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            results.append((now, stamp, msg.inference_ms))

    fresh_diagnostics = threading.Event()

    def on_diagnostics(msg):
        for status in msg.status:
            if status.name.startswith("/bench/essen_node"):
                diagnostics.update({kv.key: kv.value for kv in status.values})
                fresh_diagnostics.set()

    bench.create_subscription(Grounding, "/bench/grounding", on_grounding,
                              QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    bench.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    image_pub = bench.create_publisher(Image, "/bench/image", qos_profile_sensor_data)
    command_pub = bench.create_publisher(String, "/bench/command", 10)
    executor = SingleThreadedExecutor()
    executor.add_node(bench)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    deadline = time.monotonic() + 30
    while (image_pub.get_subscription_count() == 0 or command_pub.get_subscription_count() == 0) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    command_pub.publish(String(data="the large red metal cube"))
    time.sleep(0.3)

    frames = [rgb_to_image_msg(rgb) for rgb in camera_frames(args.width, args.height)]
    for msg in frames:
        msg.header.frame_id = "bench_camera"
    published = {"count": 0}
    stop = threading.Event()

    def camera():
        period = 1.0 / args.rate
        next_time = time.monotonic()
        index = 0
        while not stop.is_set():
            msg = frames[index % len(frames)]
            stamp = time.time_ns()
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            image_pub.publish(msg)
            if measuring.is_set():
                published["count"] += 1
            index += 1
            next_time += period
            time.sleep(max(0.0, next_time - time.monotonic()))

    camera_thread = threading.Thread(target=camera, daemon=True)
    camera_thread.start()

    rss_series = []  # (seconds since measuring started, KiB)
    print(f"warm-up {args.warmup:.0f} s, then measuring {args.duration:.0f} s at "
          f"{args.rate:.0f} Hz, {args.width}x{args.height} rgb8 ...", flush=True)
    time.sleep(args.warmup)
    # Start measuring the moment a diagnostics message arrives, so its counters are the
    # node's counters at the start of the window.
    fresh_diagnostics.clear()
    fresh_diagnostics.wait(timeout=3)
    before = dict(diagnostics)
    measuring.set()
    begin = time.monotonic()
    while time.monotonic() - begin < args.duration and node.poll() is None:
        rss_series.append((time.monotonic() - begin, rss_kib(node.pid)))
        time.sleep(1.0)
    measuring.clear()
    stop.set()
    camera_thread.join()
    time.sleep(0.5)  # last results
    fresh_diagnostics.clear()
    fresh_diagnostics.wait(timeout=3)
    after = dict(diagnostics)
    executor.shutdown()
    bench.destroy_node()
    rclpy.try_shutdown()

    if node.poll() is not None:
        print("node exited during the run:\n" + "".join(node_log), file=sys.stderr)
        return 1
    report = summarise(args, results, published["count"], before, after, rss_series)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def summarise(args, results, published, before, after, rss_series) -> dict:
    latency = [(receipt - stamp) / 1e6 for receipt, stamp, _ in results]
    inference = [ms for _, _, ms in results]
    overhead = [lat - ms for lat, ms in zip(latency, inference)]

    def delta(key):
        try:
            return int(after[key]) - int(before[key])
        except (KeyError, ValueError):
            return None

    def value(key):
        try:
            return float(after[key])
        except (KeyError, ValueError):
            return float("nan")

    wait, in_node = value("queue_wait_ms_mean"), value("node_overhead_ms_mean")
    rss_mib = [kib / 1024 for _, kib in rss_series]
    window = max(1, min(10, len(rss_mib) // 4))
    early, late = statistics.mean(rss_mib[:window]), statistics.mean(rss_mib[-window:])
    return {
        "duration_s": args.duration, "rate_hz": args.rate, "size": [args.width, args.height],
        "frames_published": published,
        "results_received": len(results),
        "node_frames_received": delta("frames_received"),
        "node_frames_processed": delta("frames_processed"),
        "node_frames_dropped": delta("frames_dropped"),
        "latency_ms_p50": percentile(latency, 50), "latency_ms_p95": percentile(latency, 95),
        "inference_ms_p50": percentile(inference, 50), "inference_ms_p95": percentile(inference, 95),
        "overhead_ms_p50": percentile(overhead, 50), "overhead_ms_p95": percentile(overhead, 95),
        # Decomposition of the mean overhead (node's diagnostics: means of its last 100 frames)
        "overhead_ms_mean": statistics.mean(overhead) if overhead else float("nan"),
        "wait_for_busy_worker_ms_mean": wait,
        "node_work_beyond_model_ms_mean": in_node,
        "transport_and_executor_ms_mean": (statistics.mean(overhead) - wait - in_node
                                           if overhead else float("nan")),
        "rss_mib_peak": max(rss_mib) if rss_mib else None,
        "rss_mib_first_window": early, "rss_mib_last_window": late,
        "rss_growth_percent": 100.0 * (late - early) / early if early else None,
        "rss_mib_every_10s": [round(v, 1) for t, v in
                              [(t, kib / 1024) for t, kib in rss_series] if int(t) % 10 == 0],
    }


def print_report(r: dict) -> None:
    print(f"frames: published {r['frames_published']}, reached the node "
          f"{r['node_frames_received']}, processed {r['node_frames_processed']}, dropped "
          f"(latest-frame-only) {r['node_frames_dropped']}, results received "
          f"{r['results_received']}")
    print(f"end-to-end latency (stamp -> result): p50 {r['latency_ms_p50']:.1f} ms, "
          f"p95 {r['latency_ms_p95']:.1f} ms")
    print(f"model forward (inference_ms):         p50 {r['inference_ms_p50']:.1f} ms, "
          f"p95 {r['inference_ms_p95']:.1f} ms")
    print(f"node overhead beyond the model:       p50 {r['overhead_ms_p50']:.1f} ms, "
          f"p95 {r['overhead_ms_p95']:.1f} ms")
    print(f"  mean {r['overhead_ms_mean']:.1f} ms = waiting for the busy worker "
          f"{r['wait_for_busy_worker_ms_mean']:.1f} + node work beyond the model (conversion, "
          f"messages) {r['node_work_beyond_model_ms_mean']:.1f} + DDS both ways and executor "
          f"{r['transport_and_executor_ms_mean']:.1f}")
    print(f"node RSS: peak {r['rss_mib_peak']:.1f} MiB; first/last window "
          f"{r['rss_mib_first_window']:.1f}/{r['rss_mib_last_window']:.1f} MiB "
          f"(growth {r['rss_growth_percent']:+.2f} %); every 10 s: {r['rss_mib_every_10s']}")


if __name__ == "__main__":
    sys.exit(main())
