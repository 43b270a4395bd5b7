"""essen-eval --live: a small bag replayed through the real node over DDS scores like the
offline evaluation of the same bag when the node keeps up."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
from eval_support import dataset  # noqa: F401

from essen_ros import bagtool, evaluate
from essen_ros.data.manifest import read_manifest
from essen_ros.model.checkpoint import load_model
from essen_ros.model.predictor import Predictor

pytestmark = pytest.mark.ros


@pytest.fixture
def small_bag(dataset, tmp_path):
    """4 frames at 2 fps: 0.5 s per frame, far more than the tiny model needs."""
    items, _ = read_manifest(dataset)
    return bagtool.write_bag(items, dataset, tmp_path / "bag", encoding="jpeg", fps=2.0,
                             max_frames=4).bag


def _same_predictions(offline, live):
    assert live["timing"]["dropped"]["dropped"] == 0
    assert live["counts"] == offline["counts"]
    by_key = {(r["stamp_ns"], r["text"]): r for r in offline["records"]}
    for record in live["records"]:
        twin = by_key[(record["stamp_ns"], record["text"])]
        assert record["labelled"] == twin["labelled"]
        if record["task"] == "vqa":
            assert record["pred_answer"] == twin["pred_answer"]
            assert record["pred_score"] == pytest.approx(twin["pred_score"], abs=1e-4)
        else:
            assert record["pred_found"] == twin["pred_found"]
            assert record["pred_score"] == pytest.approx(twin["pred_score"], abs=1e-4)
            if record["pred_found"]:  # the node sends whole pixels (RegionOfInterest)
                assert record["pred_box"] == pytest.approx(twin["pred_box"], abs=1.0)
        assert record["latency_ms"] > 0
    for section in ("grounding", "vqa"):
        for name in ("acc_iou", "acc_centre") if section == "grounding" else ("acc",):
            assert live["metrics"][section]["overall"][name] == offline["metrics"][section]["overall"][name]


def test_live_replay_scores_like_offline_evaluation(small_bag, tiny_checkpoint, tmp_path):
    # Threshold 0.3: the random model's scores (~0.45) then count as found, so boxes are
    # compared too.
    predictor = Predictor(load_model(tiny_checkpoint), threshold=0.3)
    offline = evaluate.evaluate_bag(predictor, small_bag)
    assert offline["counts"]["labelled"] == 7  # 4 commands/questions, one frame has no new command
    started = time.monotonic()
    live = evaluate.live_replay(small_bag, checkpoint=tiny_checkpoint, rate=1.0, threshold=0.3,
                                startup_timeout=90)
    assert time.monotonic() - started > 1.5  # 4 frames at 2 fps were really replayed in time
    assert any(r["task"] == "ground" and r["pred_found"] for r in live["records"])
    _same_predictions(offline, live)
    assert live["timing"]["end_to_end_latency_ms"]["n"] == len(live["records"])
    paths = evaluate.write_report(live, tmp_path / "report")
    summary = open(paths["summary"]).read()
    assert "frame sent -> result received" in summary and "0 dropped" in summary


def test_live_cli_attaches_to_a_running_node(small_bag, tiny_checkpoint, tmp_path, spawn):
    node = spawn(["-m", "essen_ros.ros.node", "--ros-args", "-r", "__ns:=/robot",
                  "-p", f"checkpoint:={tiny_checkpoint}", "-p", "image_transport:=compressed",
                  "-p", "use_sim_time:=true"])
    out = tmp_path / "report"
    run = subprocess.run([sys.executable, "-m", "essen_ros.evaluate", "--bag", str(small_bag),
                          "--live", "--attach", "--namespace", "/robot", "--rate", "2",
                          "--out", str(out), "--no-progress", "--startup-timeout", "90"],
                         capture_output=True, text=True, timeout=240,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr + run.stdout
    assert node.poll() is None  # the node we attached to keeps running
    results = json.loads((out / "results.json").read_text())
    assert results["source"]["attach"] is True
    assert results["source"]["node_topics"]["image"] == "/robot/image/compressed"
    assert results["counts"]["labelled"] == 7
    assert re.search(r"frames: 4 sent with a text, 4 answered, 0 dropped", run.stdout)


def test_live_replay_without_a_node_says_what_to_do(small_bag, tmp_path):
    run = subprocess.run([sys.executable, "-m", "essen_ros.evaluate", "--bag", str(small_bag),
                          "--live", "--attach", "--namespace", "/nobody_here", "--out",
                          str(tmp_path / "r"), "--no-progress", "--startup-timeout", "3"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "no node subscribed to /nobody_here/image/compressed" in run.stderr
    assert "Traceback" not in run.stderr
