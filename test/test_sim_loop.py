"""The simulated loop end to end: essen-sim, essen-node (a tiny random model) and essen-scorer
as three OS processes over real DDS. Frames must flow, every result must carry the stamp of a
frame the camera published, and the scorer's live numbers must equal an offline evaluation
(the Predictor called directly) of exactly the frames and texts it scored."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import rclpy
import torch
from PIL import Image as PILImage
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy

from essen_ros import metrics
from essen_ros.data.vocab import ANSWERS
from essen_ros.evaluate import evaluate_manifest
from essen_ros.model.checkpoint import load_model, make_checkpoint
from essen_ros.model.predictor import Predictor
from essen_ros.msg import Answer, Grounding, SceneTruth
from essen_ros.ros.node import _roi

pytestmark = pytest.mark.ros

SCORING_S = 10.0


class Listener:
    """The test's own view of the topics: which image stamps were published and which stamps
    the node's results carried."""

    def __init__(self):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("sim_loop_listener", context=self.context)
        self.frame_stamps: set[int] = set()
        self.result_stamps: list[int] = []
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        stamp = lambda h: h.stamp.sec * 1_000_000_000 + h.stamp.nanosec  # noqa: E731
        # Frame stamps from the ground truth, which the simulator publishes with each image
        # under its stamp (test_sim_node checks that) and with a deep reliable history, so
        # this listener misses none even on a loaded machine.
        self.node.create_subscription(SceneTruth, "scene_truth",
                                      lambda m: self.frame_stamps.add(stamp(m.header)), reliable)
        for msg_type, topic in ((Grounding, "grounding"), (Answer, "answer")):
            self.node.create_subscription(msg_type, topic,
                                          lambda m: self.result_stamps.append(stamp(m.header)), reliable)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        while not self.stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def offline_records(report_dir, predictor) -> list[dict]:
    """Rerun every scored (frame, text) from the scorer's manifest through the Predictor,
    giving results the way the node publishes them (boxes rounded to pixels, none when not
    found), labelled with the manifest's ground truth."""
    records = []
    images = {}
    for line in (report_dir / "annotations.jsonl").read_text().splitlines():
        item = json.loads(line)
        if item["image"] not in images:
            rgb = np.asarray(PILImage.open(report_dir / item["image"]).convert("RGB"))
            images[item["image"]] = (predictor.encode_image(rgb), rgb.shape)
        image, shape = images[item["image"]]
        text = predictor.encode_text(item["text"])
        record = {"task": item["task"], "text": item["text"], "variant": item["variant"],
                  "stamp_ns": item["stamp_ns"]}
        if item["task"] == "ground":
            g = predictor.ground(image, text)
            box = None
            if g.found:
                roi = _roi(g.box_xyxy, shape[1], shape[0])
                box = [roi.x_offset, roi.y_offset, roi.x_offset + roi.width, roi.y_offset + roi.height]
            record.update(true_found=item["found"], true_box=item["box"], target=item["target"],
                          objects=item["objects"], pred_found=g.found, pred_score=g.score, pred_box=box)
        else:
            a = predictor.answer(image, text)
            record.update(true_answer=item["answer"], kind=item["kind"], pred_answer=a.answer,
                          pred_score=a.score)
        records.append(record)
    return records


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


def test_sim_node_and_scorer_close_the_loop_and_match_offline_evaluation(spawn, tmp_path, checkpoint):
    report_dir = tmp_path / "report"
    listener = Listener()
    try:
        sim = spawn(["-m", "essen_ros.ros.sim", "--ros-args", "-p", "rate:=4.0", "-p", "seed:=5",
                     "-p", "scene_period:=5.0", "-p", "width:=240", "-p", "height:=160"])
        node = spawn(["-m", "essen_ros.ros.node", "--ros-args", "-r", "image:=camera/image_raw",
                      "-p", f"checkpoint:={checkpoint}", "-p", "num_threads:=1"])
        scorer = spawn(["-m", "essen_ros.ros.scorer", "--ros-args", "-p", f"duration:={SCORING_S}",
                        "-p", f"report_dir:={report_dir}", "-p", "record_frames:=true",
                        "-p", "query_period:=1.5", "-p", "seed:=1", "-p", "startup_timeout:=150.0"])
        try:
            scorer_output, _ = scorer.communicate(timeout=240)
        except Exception:
            scorer.kill()
            raise
        assert scorer.returncode == 0, scorer_output[-3000:]
        for proc in (sim, node):
            assert proc.poll() is None, f"{proc.args} died:\n{proc.stdout.read()[-3000:]}"
    finally:
        listener.close()

    report = json.loads((report_dir / "results.json").read_text())
    items = report["records"]
    frames = report["timing"]["dropped"]
    # Frames flowed (4 Hz for the scoring time alone) and the node answered most of them.
    assert report["timing"]["frames_published"] >= 4 * SCORING_S * 0.8
    assert frames["answered"] >= 10 and frames["dropped"] <= frames["sent"] / 2
    tasks = {r["task"] for r in items}
    assert tasks == {"ground", "vqa"}, f"scored tasks: {tasks}; not scored: {report['skipped']}"
    # The running summary was printed, then the evaluation summary naming the report.
    assert "| ground" in scorer_output and "VQA (" in scorer_output and "summary.md" in scorer_output
    assert (report_dir / "summary.md").is_file() and (report_dir / "examples.png").is_file()
    # Results carry the stamps of frames the camera published (as seen by this process too).
    assert listener.result_stamps
    assert set(listener.result_stamps) <= listener.frame_stamps
    assert {r["stamp_ns"] for r in items} <= listener.frame_stamps
    latency = report["timing"]["end_to_end_latency_ms"]
    assert latency["n"] > 0 and 0 < latency["p50"] < 5000

    # Offline: the same frames and texts through the Predictor give the same predictions...
    torch.set_num_threads(1)
    predictor = Predictor(load_model(checkpoint), device="cpu")
    offline = offline_records(report_dir, predictor)
    # Every scored frame was saved, unless the scorer's own copy of a frame was lost on a
    # loaded machine: then compare on the frames it has.
    recorded = [r for r in items if "image" in r]
    assert len(recorded) >= 0.9 * len(items)
    assert len(offline) == len(recorded) == report["source"]["settings"]["frames_recorded"]
    for live, again in zip(recorded, offline):
        assert (live["stamp_ns"], live["text"]) == (again["stamp_ns"], again["text"])
        if live["task"] == "ground":
            assert live["pred_found"] == again["pred_found"]
            assert live["pred_score"] == pytest.approx(again["pred_score"], abs=1e-4)
            if live["pred_found"]:
                assert np.abs(np.subtract(live["pred_box"], again["pred_box"])).max() <= 1
        else:
            assert live["pred_answer"] == again["pred_answer"]
            assert live["pred_score"] == pytest.approx(again["pred_score"], abs=1e-4)
    # ...and so the same accuracy numbers.
    offline_summary = json.loads(json.dumps(metrics.summarize(offline, ANSWERS)))
    live_summary = json.loads(json.dumps(metrics.summarize(recorded, ANSWERS)))
    assert live_summary["grounding"] == offline_summary["grounding"]
    assert live_summary["vqa"] == offline_summary["vqa"]
    if len(recorded) == len(items):
        assert report["metrics"]["grounding"] == offline_summary["grounding"]
        assert report["metrics"]["vqa"] == offline_summary["vqa"]
    # essen-eval's own manifest evaluation reads the scorer's recording as it is.
    manifest = [json.loads(line) for line in (report_dir / "annotations.jsonl").read_text().splitlines()]
    evaluated = evaluate_manifest(predictor, manifest, report_dir, answer_labels=ANSWERS)
    assert evaluated["counts"]["labelled"] == len(recorded) and not evaluated["skipped"]
    assert evaluated["metrics"]["vqa"] == live_summary["vqa"]
    by_key = {(r["image"], r["task"], r["text"]): r for r in evaluated["records"]}
    for live in recorded:
        again = by_key[(live["image"], live["task"], live["text"])]
        assert again.get("pred_found") == live.get("pred_found")
        assert again.get("pred_answer") == live.get("pred_answer")


def test_one_command_runs_the_whole_loop_and_stops_its_children(spawn, tmp_path, checkpoint):
    """`essen-scorer --launch`: the README's command for machines without `ros2 launch`."""
    scorer = spawn(["-m", "essen_ros.ros.scorer", "--launch", "--checkpoint", str(checkpoint),
                    "--rate", "4", "--ros-args", "-p", "duration:=4.0", "-p", f"report_dir:={tmp_path / 'rep'}"])
    out, _ = scorer.communicate(timeout=240)
    assert scorer.returncode == 0, out[-3000:]
    results = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert results["counts"]["labelled"] > 0
    # Both children were stopped cleanly before the scorer exited.
    assert "[essen_sim]: shutting down after" in out and "[essen_node]: shutting down" in out


def test_one_command_stops_when_the_node_cannot_start(spawn, tmp_path):
    scorer = spawn(["-m", "essen_ros.ros.scorer", "--launch", "--checkpoint", str(tmp_path / "missing"),
                    "--ros-args", "-p", f"report_dir:={tmp_path / 'rep'}"])
    out, _ = scorer.communicate(timeout=120)
    assert scorer.returncode == 1
    assert f"checkpoint not found: {tmp_path / 'missing'}" in out
    assert "essen-node (exit status 2) stopped" in out
