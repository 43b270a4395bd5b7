"""Closed-loop scorer (``essen-scorer``): talks to the perception node like a user would and
scores what it says against the simulator's ground truth, live.

Loop: every ``query_period`` seconds (and at once when the scene changes) the scorer makes a
command and a question from the current scene with the scene generator's language generator
and publishes them on ``command`` / ``question``. The node grounds / answers them on every
frame it processes and copies the frame's header into each result. The scorer looks the
result's stamp up in the ``scene_truth`` + ``camera/pose`` it received for that very frame and
recomputes the label there (the camera moves: "left of" and what is visible can change from
frame to frame), so every result is judged on what its own image showed. A label that the
frame cannot decide (the referent is ambiguous or partly hidden from this view) is not scored
and is counted as such.

Scored per result: grounding correct at IoU >= 0.5 (and found/not-found), VQA answer
correct, latency from image stamp to the result's arrival, and frames the node never
answered (dropped). A one-line running summary is printed every ``summary_period`` seconds;
after ``duration`` seconds of scoring (or on Ctrl-C) the report is written to ``report_dir``
in the format of ``essen-eval`` (essen_ros.report): ``results.json`` (every number and every
scored item), ``summary.md`` and plots. With ``record_frames`` every scored frame is also
saved as a PNG with an ``annotations.jsonl`` manifest, so an offline evaluation
(``essen-eval <report_dir>``) can rerun exactly those frames.

``essen-scorer --launch`` also starts ``essen-sim`` and ``essen-node`` as child processes
(for machines without ``ros2 launch``): the whole simulated loop in one command.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from essen_ros import metrics
from essen_ros.ros.runtime import StartupError, declare_read_only_parameters

NODE_NAME = "essen_scorer"
EXIT_STARTUP_ERROR = 2
VQA_KIND_CYCLE = ("attribute", "count", "exist", "compare")
MAX_TRUTH_FRAMES = 600      # frames of ground truth kept for results that arrive late
MAX_CACHED_IMAGES = 60      # camera frames kept in memory until their results arrive

# name -> (default, description, (low, high) or None). Read once at start.
PARAMETERS = {
    "duration": (60.0, "Seconds of scoring (node clock, counted from the node's first result) "
                 "after which the report is written and the scorer exits; 0 = run until "
                 "Ctrl-C.", (0.0, 1e7)),
    "startup_timeout": (120.0, "Give up (report what there is, exit status 1) when the node has "
                        "sent no result this many seconds after start; 0 = wait forever.",
                        (0.0, 1e7)),
    "query_period": (4.0, "Seconds between new commands / questions.", (0.1, 3600.0)),
    "negative_rate": (0.2, "Share of commands that name nothing in the scene (the node must "
                      "answer not-found).", (0.0, 1.0)),
    "summary_period": (2.0, "Seconds between running summary lines.", (0.1, 3600.0)),
    "report_dir": ("sim_report", "Folder for the report: results.json, summary.md, plots (created).", None),
    "record_frames": (False, "Also save every scored frame (PNG) and an annotations.jsonl "
                      "manifest in report_dir, for offline re-evaluation.", None),
    "seed": (0, "Seed of the generated commands and questions.", (0, 2**31 - 1)),
}


# ---------------------------------------------------------------------------------------------
# Ground truth of one frame, and labels on it (no ROS)
# ---------------------------------------------------------------------------------------------

@dataclass
class TruthFrame:
    """What the simulator says was in the image with this stamp."""
    stamp_ns: int
    scene_id: int
    objects: list            # essen_ros.data.scene.SceneObject (scene units)
    boxes: list              # per object [x0, y0, x1, y1] or None (not in view)
    visible: list            # per object: seen well enough to be talked about
    relations: dict          # CLEVR relations for this frame's camera
    received_wall: float = 0.0


def truth_frame(truth_msg, pose_msg, received_wall: float = 0.0) -> TruthFrame:
    """SceneTruth + camera PoseStamped (same stamp) -> TruthFrame with relations recomputed
    for that camera."""
    from essen_ros.data.scene import Camera, SceneObject, relations
    from essen_ros.ros.sim import METRES_PER_UNIT, quaternion_to_rotation
    objects, boxes, visible = [], [], []
    for o in sorted(truth_msg.objects, key=lambda o: o.index):
        position = tuple(v / METRES_PER_UNIT for v in (o.position.x, o.position.y, o.position.z))
        objects.append(SceneObject(shape=o.shape, color=o.color, material=o.material, size=o.size,
                                   position=position))
        box = o.box
        boxes.append([box.x_offset, box.y_offset, box.x_offset + box.width, box.y_offset + box.height]
                     if box.width > 0 and box.height > 0 else None)
        visible.append(bool(o.visible))
    q = pose_msg.pose.orientation
    forward = quaternion_to_rotation(q.w, q.x, q.y, q.z)[:, 2]   # optical z axis
    p = pose_msg.pose.position
    position = np.array([p.x, p.y, p.z]) / METRES_PER_UNIT
    camera = Camera(tuple(position), tuple(position + forward), fovy=30.0)  # fovy unused here
    stamp = truth_msg.header.stamp
    return TruthFrame(stamp.sec * 1_000_000_000 + stamp.nanosec, int(truth_msg.scene_id),
                      objects, boxes, visible, relations(objects, camera), received_wall)


@dataclass
class Query:
    """A command or question the scorer sent, with the program that defines its label."""
    task: str                # "ground" or "vqa"
    text: str
    program: dict
    variant: str
    kind: str | None = None  # VQA question kind
    scene_id: int = 0


def _normalised(text: str) -> str:
    # The node echoes the text after collapsing whitespace.
    return " ".join(text.split())


def make_command(frame: TruthFrame, rng: np.random.Generator, negative: bool) -> Query | None:
    from essen_ros.data.language import LanguageGenerator
    generator = LanguageGenerator(frame.objects, frame.visible, frame.relations, rng)
    items = generator.ground_items(1, 1) if negative else generator.ground_items(1, 0)
    if not items:
        return None
    item = items[0]
    return Query("ground", _normalised(item["text"]), item["program"], item["variant"],
                 scene_id=frame.scene_id)


def make_question(frame: TruthFrame, rng: np.random.Generator, kind: str) -> Query | None:
    from essen_ros.data.language import LanguageGenerator
    generator = LanguageGenerator(frame.objects, frame.visible, frame.relations, rng)
    if kind == "attribute":
        item = generator.attribute_question()
    elif kind == "count":
        item = generator.count_question()
    elif kind == "exist":
        item = generator.exist_question(want_yes=bool(rng.random() < 0.5))
    else:
        item = generator.compare_question(want_same=bool(rng.random() < 0.5))
    if item is None:
        return None
    return Query("vqa", _normalised(item["text"]), item["program"], item["variant"],
                 kind=item["kind"], scene_id=frame.scene_id)


def _references(program: dict) -> list:
    if "refs" in program:
        return list(program["refs"])
    return [program["ref"]] if "ref" in program else []


def label(query: Query, frame: TruthFrame) -> tuple[dict | None, str]:
    """Ground-truth fields of a metrics record for this query on this frame, or
    (None, why) when the frame cannot decide it: every object the label depends on must be
    visible in this view, and references must be unique where the program needs it."""
    from essen_ros.data.language import execute, involved, resolve
    objects, rels = frame.objects, frame.relations
    for reference in _references(query.program):
        if not all(frame.visible[i] for i in involved(reference, objects, rels)):
            return None, "partly hidden in this view"
    if query.task == "ground":
        found = resolve(query.program["ref"], objects, rels)
        if len(found) > 1:
            return None, "ambiguous in this view"
        # Objects in view, with the target's position among them (centre-nearest criterion).
        in_view = [i for i, box in enumerate(frame.boxes) if box is not None]
        fields = {"objects": [{"box": frame.boxes[i]} for i in in_view]}
        if not found:
            return {**fields, "true_found": False, "true_box": None, "target": None}, ""
        target = found[0]
        return {**fields, "true_found": True, "true_box": frame.boxes[target],
                "target": in_view.index(target)}, ""
    try:
        answer = execute(query.program, objects, rels)
    except ValueError:
        return None, "ambiguous in this view"
    return {"true_answer": str(answer), "kind": query.kind}, ""


# ---------------------------------------------------------------------------------------------
# Live bookkeeping (no ROS): truths by stamp, results -> records, running numbers
# ---------------------------------------------------------------------------------------------

@dataclass
class Result:
    """The parts of a Grounding / Answer message the scorer uses (plain values)."""
    task: str                # "ground" or "vqa"
    stamp_ns: int
    text: str
    found: bool = False
    score: float = 0.0
    box: list | None = None  # [x0, y0, x1, y1]; None when not found
    answer: str = ""
    inference_ms: float = 0.0
    reason: str = ""


class LiveScore:
    def __init__(self):
        self.truths: OrderedDict[int, TruthFrame] = OrderedDict()
        self.queries: dict[tuple[str, str], Query] = {}
        self.records: list[dict] = []
        self.skipped: dict[str, int] = {}
        self.frames_seen = 0
        self.answered_stamps: set[int] = set()
        self.latencies_ms: list[float] = []

    def add_truth(self, frame: TruthFrame) -> None:
        self.truths[frame.stamp_ns] = frame
        self.frames_seen += 1
        while len(self.truths) > MAX_TRUTH_FRAMES:
            self.truths.popitem(last=False)

    def latest_truth(self) -> TruthFrame | None:
        return next(reversed(self.truths.values()), None)

    def add_query(self, query: Query) -> None:
        self.queries[(query.task, query.text)] = query

    def _skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def add_result(self, result: Result, latency_ms: float | None) -> dict | None:
        """Score one result; returns the record (None when it cannot be scored)."""
        frame = self.truths.get(result.stamp_ns)
        if frame is None:
            self._skip("no ground truth with this stamp")
            return None
        self.answered_stamps.add(result.stamp_ns)
        if latency_ms is not None:
            self.latencies_ms.append(latency_ms)
        query = self.queries.get((result.task, _normalised(result.text)))
        if query is None:
            self._skip("text not sent by this scorer")
            return None
        if result.reason and result.inference_ms <= 0:
            # The model never ran (empty text, ...). A plain not-found also carries a reason
            # ("best score below threshold"), but with the time the model took: scored.
            self._skip(f"node gave no result: {result.reason}")
            return None
        truth, why = label(query, frame)
        if truth is None:
            self._skip(why)
            return None
        record = {"task": query.task, "text": query.text, "variant": query.variant, **truth,
                  "stamp_ns": result.stamp_ns, "scene": frame.scene_id,
                  "ms": result.inference_ms, "latency_ms": latency_ms}
        if query.task == "ground":
            record.update(pred_found=result.found, pred_score=result.score,
                          pred_box=result.box if result.found else None)
        else:
            record.update(pred_answer=result.answer, pred_score=result.score)
        self.records.append(record)
        return record

    def frames(self) -> dict:
        """Frames the node never answered, counted between its first and last answered frame
        (before: the node was starting or had no text yet; after: still in flight)."""
        if not self.answered_stamps:
            return metrics.dropped_frames([], [])
        first, last = min(self.answered_stamps), max(self.answered_stamps)
        sent = [s for s in self.truths if first <= s <= last]
        return metrics.dropped_frames(sent, self.answered_stamps)

    def summary(self) -> dict:
        return {
            "metrics": metrics.summarize(self.records),
            "frames": {**self.frames(), "published_seen": self.frames_seen},
            "latency_ms": metrics.latency_stats(self.latencies_ms),
            "not_scored": dict(sorted(self.skipped.items())),
        }

    def running_line(self, elapsed_s: float) -> str:
        ground = [r for r in self.records if r["task"] == "ground"]
        vqa = [r for r in self.records if r["task"] == "vqa"]
        g = metrics.grounding_metrics(ground)["overall"]
        v = metrics.vqa_metrics(vqa)["overall"]
        frames = self.frames()
        lat = metrics.latency_stats(self.latencies_ms)
        return (f"{elapsed_s:6.1f} s | frames {self.frames_seen} answered {frames['answered']} "
                f"dropped {frames['dropped']} | ground {_pct(g['acc_iou'])} (n={g['n']}) "
                f"| vqa {_pct(v['acc'])} (n={v['n']}) | latency p50 {_ms(lat['p50'])} "
                f"p95 {_ms(lat['p95'])}")


def _pct(value) -> str:
    return "  -  " if value is None else f"{100 * value:5.1f}%"


def _ms(value) -> str:
    return "-" if value is None else f"{value:.0f} ms"


# ---------------------------------------------------------------------------------------------
# Report files: the evaluation report's format (essen_ros.report), live numbers in "timing"
# ---------------------------------------------------------------------------------------------

EXAMPLE_PANELS = 8


def build_results(score: LiveScore, settings: dict, elapsed_s: float, examples=None) -> dict:
    """The results dict of `essen-eval` (essen_ros.evaluate.finish_results) for a live run."""
    from essen_ros.data.vocab import ANSWERS
    from essen_ros.evaluate import finish_results
    frames = score.frames()
    warnings = []
    if frames["dropped"]:
        warnings.append(f"{frames['dropped']} of {frames['sent']} frames got no result from the "
                        "node (it was busy with an earlier frame): a lower camera rate lets it "
                        "keep up")
    timing = {"rate": 1.0, "frames": frames["sent"], "replay_seconds": elapsed_s,
              "frames_published": score.frames_seen,
              "end_to_end_latency_ms": metrics.latency_stats(score.latencies_ms),
              "node_inference_ms": metrics.latency_stats([r["ms"] for r in score.records]),
              "dropped": frames, "mismatched_text": 0}
    source = {"kind": "live simulation", "root": "essen-sim -> essen-node -> essen-scorer",
              "settings": settings}
    return finish_results(score.records, source=source, timing=timing,
                          skipped=Counter(score.skipped), warnings=warnings,
                          answer_labels=ANSWERS, examples=examples or [])


def write_report(report_dir: Path, score: LiveScore, settings: dict, elapsed_s: float,
                 examples=None) -> dict:
    """results.json, summary.md and the plots in report_dir (essen_ros.report); returns the
    results dict."""
    from essen_ros.report import write_report as write_evaluation_report
    results = build_results(score, settings, elapsed_s, examples)
    write_evaluation_report(results, report_dir)
    return results


class FrameStore:
    """Recent camera frames by stamp, so scored frames can be shown and saved: a few become
    the report's example panels, and with a folder every scored frame is saved as a PNG and
    listed in an annotations.jsonl manifest (the package's manifest format), so `essen-eval`
    or a Predictor can rerun exactly these frames offline."""

    def __init__(self, folder: Path | None = None, max_examples: int = EXAMPLE_PANELS):
        self.folder = folder
        if folder is not None:
            (folder / "frames").mkdir(parents=True, exist_ok=True)
        self.images: OrderedDict[int, np.ndarray] = OrderedDict()
        self.saved: dict[int, str] = {}
        self.waiting: list[dict] = []          # records whose frame has not arrived yet
        self.examples: dict[int, tuple] = {}   # stamp -> (rgb, [records])
        self.max_examples = max_examples

    def add_image(self, stamp_ns: int, rgb: np.ndarray) -> None:
        self.images[stamp_ns] = rgb
        while len(self.images) > MAX_CACHED_IMAGES:
            self.images.popitem(last=False)
        waiting, self.waiting = self.waiting, []
        for record in waiting:
            self.attach(record)

    def attach(self, record: dict) -> None:
        stamp = record["stamp_ns"]
        rgb = self.images.get(stamp)
        if rgb is None:
            if stamp not in self.saved and len(self.waiting) < 10 * MAX_CACHED_IMAGES:
                self.waiting.append(record)
            elif stamp in self.saved:
                record["image"] = self.saved[stamp]
            return
        self._add_example(stamp, rgb, record)
        if self.folder is None:
            return
        if stamp not in self.saved:
            from PIL import Image as PILImage
            name = f"frames/{stamp}.png"
            tmp = self.folder / f"{name}.partial"
            PILImage.fromarray(rgb).save(tmp, format="PNG")
            os.replace(tmp, self.folder / name)
            self.saved[stamp] = name
        record["image"] = self.saved[stamp]

    def _add_example(self, stamp: int, rgb: np.ndarray, record: dict) -> None:
        # One panel per new text, up to max_examples, with every result on that frame.
        if stamp in self.examples:
            self.examples[stamp][1].append(record)
            return
        shown = {r["text"] for _, records in self.examples.values() for r in records}
        if len(self.examples) < self.max_examples and record["text"] not in shown:
            self.examples[stamp] = (rgb, [record])

    def example_list(self) -> list:
        return [self.examples[s] for s in sorted(self.examples)]

    def write_manifest(self, records: list[dict]) -> int:
        """annotations.jsonl for the scored frames that were saved; returns the line count."""
        lines = []
        for r in records:
            if "image" not in r:
                continue
            line = {"image": r["image"], "task": r["task"], "text": r["text"],
                    "variant": r["variant"], "scene": r["scene"], "stamp_ns": r["stamp_ns"]}
            if r["task"] == "ground":
                line.update(found=r["true_found"], box=r["true_box"], target=r["target"],
                            objects=r["objects"])
            else:
                line.update(answer=r["true_answer"], kind=r["kind"])
            lines.append(json.dumps(line))
        path = self.folder / "annotations.jsonl"
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text("".join(line + "\n" for line in lines))
        os.replace(tmp, path)
        return len(lines)


# ---------------------------------------------------------------------------------------------
# The ROS node
# ---------------------------------------------------------------------------------------------

def _make_node_class():
    # rclpy and the messages are imported only when the node really runs, so the scoring
    # logic above stays importable (and testable) without ROS.
    import rclpy
    from geometry_msgs.msg import PoseStamped
    from rclpy.node import Node
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from essen_ros.msg import Answer, Grounding, SceneTruth
    from essen_ros.ros.sim import CAMERA_POSE_TOPIC, IMAGE_TOPIC, SCENE_TRUTH_TOPIC

    class ScorerNode(Node):
        def __init__(self):
            super().__init__(NODE_NAME)
            self.params = declare_read_only_parameters(self, PARAMETERS)
            self.report_dir = Path(self.params["report_dir"]).expanduser()
            try:
                self.report_dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StartupError(f"cannot create report_dir {self.report_dir}: {error}") from error
            self.use_sim_time = bool(self.get_parameter("use_sim_time").value)
            self.score = LiveScore()
            self.rng = np.random.default_rng(self.params["seed"])
            self.frames = FrameStore(self.report_dir if self.params["record_frames"] else None)
            self._pending_truth: dict[int, object] = {}
            self._pending_pose: dict[int, object] = {}
            self._kind_index = 0
            self._last_query_ns: int | None = None
            self._query_scene: int | None = None
            self._had_subscribers = False
            self.command: Query | None = None
            self.question: Query | None = None
            self.launched_ns = self.get_clock().now().nanoseconds
            self.start_ns: int | None = None     # first result: scoring time starts
            self.done = threading.Event()
            self.failure = ""

            reliable = QoSProfile(depth=50, history=HistoryPolicy.KEEP_LAST,
                                  reliability=ReliabilityPolicy.RELIABLE)
            text_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            self.create_subscription(SceneTruth, SCENE_TRUTH_TOPIC, self._on_truth, reliable)
            self.create_subscription(PoseStamped, CAMERA_POSE_TOPIC, self._on_pose, reliable)
            self.create_subscription(Grounding, "grounding", self._on_grounding, reliable)
            self.create_subscription(Answer, "answer", self._on_answer, reliable)
            # Frames for the report's example panels (and record_frames).
            self.create_subscription(Image, IMAGE_TOPIC, self._on_image,
                                     QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
            self.command_pub = self.create_publisher(String, "command", text_qos)
            self.question_pub = self.create_publisher(String, "question", text_qos)
            self.create_timer(0.1, self._tick)
            self.create_timer(self.params["summary_period"], self._print_summary)
            self.get_logger().info(
                f"scoring {self.resolve_topic_name('grounding')} and "
                f"{self.resolve_topic_name('answer')} against "
                f"{self.resolve_topic_name(SCENE_TRUTH_TOPIC)}; sending on "
                f"{self.command_pub.topic_name} / {self.question_pub.topic_name} every "
                f"{self.params['query_period']:g} s; report in {self.report_dir}"
                + (f" after {self.params['duration']:g} s" if self.params["duration"] > 0 else ""))

        # -- inputs ------------------------------------------------------------------------
        @staticmethod
        def _stamp_ns(header) -> int:
            return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec

        def _on_truth(self, msg):
            stamp = self._stamp_ns(msg.header)
            pose = self._pending_pose.pop(stamp, None)
            if pose is None:
                self._pending_truth[stamp] = msg
            else:
                self._add_frame(msg, pose)

        def _on_pose(self, msg):
            stamp = self._stamp_ns(msg.header)
            truth = self._pending_truth.pop(stamp, None)
            if truth is None:
                self._pending_pose[stamp] = msg
            else:
                self._add_frame(truth, msg)

        def _add_frame(self, truth, pose):
            try:
                frame = truth_frame(truth, pose, received_wall=time.monotonic())
            except (KeyError, ValueError) as error:  # unknown attribute values and the like
                self.get_logger().error(f"bad scene_truth message: {error}",
                                        throttle_duration_sec=5.0)
                return
            self.score.add_truth(frame)
            for pending in (self._pending_truth, self._pending_pose):
                for stale in [s for s in pending if s < frame.stamp_ns]:
                    del pending[stale]

        def _on_image(self, msg):
            if msg.encoding != "rgb8":
                self.get_logger().error(f"expected rgb8 images from essen-sim, got {msg.encoding}",
                                        throttle_duration_sec=10.0)
                return
            rgb = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)
            rgb = rgb[:, : msg.width * 3].reshape(msg.height, msg.width, 3).copy()
            self.frames.add_image(self._stamp_ns(msg.header), rgb)

        def _latency_ms(self, stamp_ns: int) -> float | None:
            if self.use_sim_time:
                # Simulated time moves in frame steps: measure wall time from the frame's
                # ground truth (published with the image) to the result instead.
                frame = self.score.truths.get(stamp_ns)
                return None if frame is None else (time.monotonic() - frame.received_wall) * 1000
            return (self.get_clock().now().nanoseconds - stamp_ns) / 1e6

        def _on_grounding(self, msg):
            stamp = self._stamp_ns(msg.header)
            box = None
            if msg.found:
                b = msg.box
                box = [b.x_offset, b.y_offset, b.x_offset + b.width, b.y_offset + b.height]
            self._record(Result("ground", stamp, msg.command, found=bool(msg.found),
                                score=float(msg.score), box=box, inference_ms=float(msg.inference_ms),
                                reason=msg.reason), stamp)

        def _on_answer(self, msg):
            stamp = self._stamp_ns(msg.header)
            self._record(Result("vqa", stamp, msg.question, answer=msg.answer,
                                score=float(msg.score), inference_ms=float(msg.inference_ms),
                                reason=msg.reason), stamp)

        def _record(self, result: Result, stamp: int):
            if self.start_ns is None:
                self.start_ns = self.get_clock().now().nanoseconds
                self.get_logger().info("first result from the node: scoring starts")
            record = self.score.add_result(result, self._latency_ms(stamp))
            if record is not None:
                self.frames.attach(record)

        # -- outputs -------------------------------------------------------------------------
        def _tick(self):
            now = self.get_clock().now().nanoseconds
            duration, timeout = self.params["duration"], self.params["startup_timeout"]
            if self.start_ns is None and timeout > 0 and now - self.launched_ns >= timeout * 1e9:
                self.failure = (
                    f"no result on {self.resolve_topic_name('grounding')} or "
                    f"{self.resolve_topic_name('answer')} after {timeout:g} s: is essen-node "
                    f"running, with its image topic remapped to {IMAGE_TOPIC} "
                    f"(-r image:={IMAGE_TOPIC}), and is essen-sim publishing?")
                self.done.set()
                return
            if self.start_ns is not None and duration > 0 and now - self.start_ns >= duration * 1e9:
                self.done.set()
                return
            frame = self.score.latest_truth()
            if frame is None:
                return
            subscribed = (self.command_pub.get_subscription_count() > 0
                          and self.question_pub.get_subscription_count() > 0)
            if not subscribed:
                self._had_subscribers = False
                return
            period_ns = self.params["query_period"] * 1e9
            due = (self._last_query_ns is None or now - self._last_query_ns >= period_ns
                   or frame.scene_id != self._query_scene or not self._had_subscribers)
            if due:
                self._send_queries(frame, now)

        def _send_queries(self, frame: TruthFrame, now: int):
            negative = bool(self.rng.random() < self.params["negative_rate"])
            command = make_command(frame, self.rng, negative) or make_command(frame, self.rng, True)
            kind = VQA_KIND_CYCLE[self._kind_index % len(VQA_KIND_CYCLE)]
            self._kind_index += 1
            question = make_question(frame, self.rng, kind) or make_question(frame, self.rng, "count")
            for query, pub in ((command, self.command_pub), (question, self.question_pub)):
                if query is None:
                    continue
                self.score.add_query(query)   # known before any result can name it
                pub.publish(String(data=query.text))
            self.command, self.question = command, question
            self._last_query_ns, self._query_scene = now, frame.scene_id
            self._had_subscribers = True

        def _elapsed_s(self) -> float:
            if self.start_ns is None:
                return 0.0
            return (self.get_clock().now().nanoseconds - self.start_ns) / 1e9

        def _print_summary(self):
            if self.start_ns is None:
                waited = (self.get_clock().now().nanoseconds - self.launched_ns) / 1e9
                print(f"waiting for the node's first result ({waited:.0f} s; "
                      f"{self.score.frames_seen} frames of ground truth so far)", flush=True)
                return
            print(self.score.running_line(self._elapsed_s()), flush=True)

        def finish(self) -> dict:
            elapsed = self._elapsed_s()
            settings = dict(self.params, use_sim_time=self.use_sim_time)
            if self.frames.folder is not None:
                settings["frames_recorded"] = self.frames.write_manifest(self.score.records)
            results = write_report(self.report_dir, self.score, settings, elapsed,
                                   self.frames.example_list())
            from essen_ros.report import format_summary
            print(self.score.running_line(elapsed), flush=True)
            print(format_summary(results), flush=True)
            print(f"report: {self.report_dir / 'summary.md'} (numbers and every scored item: "
                  f"{self.report_dir / 'results.json'})", flush=True)
            return results

    return rclpy, ScorerNode


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

def _parse_cli(argv: list[str]):
    parser = argparse.ArgumentParser(
        prog="essen-scorer",
        description="Score the perception node live against the simulator's ground truth. "
                    "Parameters: --ros-args -p duration:=60 -p report_dir:=sim_report ...")
    parser.add_argument("--launch", action="store_true",
                        help="also start essen-sim and essen-node (the whole loop in one command)")
    parser.add_argument("--checkpoint", default="",
                        help="with --launch: model checkpoint for essen-node (default: shipped model)")
    parser.add_argument("--rate", type=float, default=5.0, help="with --launch: camera frame rate, Hz")
    parser.add_argument("--sim-time", action="store_true",
                        help="with --launch: the simulator publishes /clock, all nodes use it")
    return parser.parse_known_args(argv)


def _launch_children(cli, env: dict) -> dict[str, subprocess.Popen]:
    """essen-sim and essen-node as child processes, wired like launch/sim.launch.py."""
    python = sys.executable
    sim_time = "true" if cli.sim_time else "false"
    sim = [python, "-m", "essen_ros.ros.sim", "--ros-args", "-p", f"rate:={cli.rate}",
           "-p", f"publish_clock:={sim_time}"]
    node = [python, "-m", "essen_ros.ros.node", "--ros-args", "-r", "image:=camera/image_raw",
            "-p", f"use_sim_time:={sim_time}"]
    if cli.checkpoint:
        node += ["-p", f"checkpoint:={cli.checkpoint}"]
    return {"essen-sim": subprocess.Popen(sim, env=env), "essen-node": subprocess.Popen(node, env=env)}


def main(argv: list[str] | None = None) -> int:
    from essen_ros.ros.dds import apply_default_profile
    apply_default_profile()
    argv = list(sys.argv if argv is None else argv)
    ros_start = argv.index("--ros-args") if "--ros-args" in argv else len(argv)
    cli, unknown = _parse_cli(argv[1:ros_start])
    if unknown:
        print(f"essen-scorer: unknown arguments {unknown} (ROS parameters go after --ros-args)",
              file=sys.stderr)
        return EXIT_STARTUP_ERROR
    ros_args = argv[:1] + argv[ros_start:]
    if cli.launch and cli.sim_time and "use_sim_time" not in " ".join(ros_args):
        ros_args += (["--ros-args"] if "--ros-args" not in ros_args else []) + ["-p", "use_sim_time:=true"]

    rclpy, ScorerNode = _make_node_class()
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions
    rclpy.init(args=ros_args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    logger = rclpy.logging.get_logger(NODE_NAME)
    children: dict[str, subprocess.Popen] = {}
    exit_code = 0
    node = None
    try:
        node = ScorerNode()
        if cli.launch:
            children = _launch_children(cli, dict(os.environ))
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            while not stop.is_set() and not node.done.is_set() and rclpy.ok():
                executor.spin_once(timeout_sec=0.1)
                exited = [f"{name} (exit status {child.returncode})"
                          for name, child in children.items() if child.poll() is not None]
                if exited:
                    logger.error(f"{', '.join(exited)} stopped (its log is above); stopping")
                    exit_code = 1
                    break
        except ExternalShutdownException:
            pass
        node.finish()
        if node.failure:
            logger.error(node.failure)
            exit_code = 1
        executor.shutdown()
    except StartupError as error:
        logger.error(str(error))
        exit_code = EXIT_STARTUP_ERROR
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in children.values():
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
