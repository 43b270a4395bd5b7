"""``essen-eval``: score the model on a labelled dataset, on a recorded bag (offline, every
frame), or by replaying that bag live through the perception node over DDS.

    essen-eval --data ../shared/data/clevr-dev --out eval/clevr-dev [--model PATH] [--limit N]
    essen-eval --bag demo_bag --out eval/bag [--sidecar truth.jsonl]
    essen-eval --bag demo_bag --live --rate 1.0 --out eval/live

All three produce the same kind of *results* dict (per-item records plus metrics, see
``essen_ros.metrics``) and the same report: ``results.json``, ``summary.md`` and PNG plots.
Other parts reuse the pieces:

    results = evaluate_manifest(predictor, items, root)          # dataset items
    results = evaluate_bag(predictor, "bag_dir")                 # offline, every frame
    results = live_replay("bag_dir", checkpoint="models/x")      # through essen-node
    paths = write_report(results, "out_dir")
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path


from essen_ros import metrics
from essen_ros.bagtool import (
    COMPRESSED_TYPE,
    BagError,
    resolve_bag_path,
    BagSource,
    find_sidecar,
    item_to_dict,
    load_rgb,
    message_to_rgb,
    read_sidecar,
    stamp_ns_of,
)

EXIT_USER_ERROR = 2
EXAMPLE_PANELS = 8


class EvalError(Exception):
    """A user-facing problem (missing file, bad option): printed, exit status 2."""


def normalise_text(text: str) -> str:
    """Whitespace-collapsed text, as the node echoes it: the key that ties truth to results."""
    return " ".join(str(text).split())


# ------------------------------------------------------------------------------ records
def truth_fields(truth: dict) -> dict:
    """Manifest fields -> the ``true_*`` half of a record (see essen_ros.metrics)."""
    task = truth.get("task")
    record = {"task": task, "text": normalise_text(truth.get("text", "")),
              "variant": truth.get("variant") or "unknown"}
    if task == "ground":
        found = truth.get("found", True) is not False
        record.update(true_found=found, true_box=truth.get("box") if found else None,
                      target=truth.get("target") if found else None,
                      objects=truth.get("objects"))
    elif task == "vqa":
        record.update(true_answer=str(truth.get("answer")),
                      kind=truth.get("kind") or metrics.infer_question_kind(
                          truth.get("text", ""), truth.get("answer")))
    return record


def ground_prediction(result) -> dict:
    """Predictor.GroundResult -> the ``pred_*`` half of a grounding record."""
    return {"pred_found": bool(result.found), "pred_score": float(result.score),
            "pred_box": [round(float(v), 2) for v in result.box_xyxy], "ms": float(result.ms)}


def answer_prediction(result) -> dict:
    return {"pred_answer": str(result.answer), "pred_score": float(result.score),
            "pred_top": [[a, round(float(p), 4)] for a, p in list(result.top)[:3]],
            "ms": float(result.ms)}


def _required_missing(truth: dict) -> str | None:
    """Name of a field the item needs to be scored, or None when it is complete."""
    task = truth.get("task")
    if task not in ("ground", "vqa"):
        return "task"
    if not str(truth.get("text", "")).strip():
        return "text"
    if task == "ground" and truth.get("found", True) is not False and truth.get("box") is None:
        return "box"
    if task == "vqa" and truth.get("answer") in (None, ""):
        return "answer"
    return None


class _TextEncoder:
    """Each distinct text is encoded once for the whole run (the text tower does not see
    the image, so its output is the same on every frame)."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.cache: dict[str, object] = {}
        self.truncated: set[str] = set()

    def __call__(self, text: str):
        if text not in self.cache:
            encoded = self.predictor.encode_text(text)
            if getattr(encoded, "truncated", False):
                self.truncated.add(text)
            self.cache[text] = encoded
        return self.cache[text]


def _progress(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="img", leave=False, file=sys.stderr)


def _source_info(predictor, **extra) -> dict:
    info = {"threshold": getattr(predictor, "threshold", None)}
    config = getattr(predictor, "config", None)
    if config is not None:
        info["input_size"] = list(getattr(config, "input_size", []) or [])
        info["model_kind"] = getattr(config, "kind", None)
    info.update(extra)
    return info


def finish_results(records: list[dict], *, source: dict, timing: dict, skipped: Counter,
                   warnings: list[str], answer_labels=None, examples=None) -> dict:
    """Assemble the results dict every evaluation returns (and write_report consumes).
    Metrics are computed on labelled records only (records with a ``true_*`` side)."""
    labelled = [r for r in records if r.get("labelled", True)]
    summary = metrics.summarize(labelled, answer_labels)
    summary["model_latency_ms"] = {
        "ground": metrics.latency_stats([r.get("ms") for r in records if r["task"] == "ground"]),
        "vqa": metrics.latency_stats([r.get("ms") for r in records if r["task"] == "vqa"]),
    }
    return {
        "source": source,
        "metrics": summary,
        "timing": timing,
        "counts": {"records": len(records), "labelled": len(labelled),
                   "unlabelled": len(records) - len(labelled)},
        "skipped": dict(skipped),
        "warnings": warnings,
        "records": records,
        "_examples": examples or [],  # [(rgb array, [records])]: for the report's picture only
    }


# ------------------------------------------------------------------------------ dataset
def evaluate_manifest(predictor, items: Sequence, root: Path | str, *, limit: int | None = None,
                      threshold: float | None = None, progress: bool = False,
                      answer_labels: Sequence[str] | None = None) -> dict:
    """Run the model on manifest items (``Item`` objects or dicts with the manifest fields,
    image paths relative to ``root``). Each image is loaded and encoded once; each text
    once. ``limit``: at most this many items (in manifest order). Items missing a needed
    field and images that fail to load are skipped and counted."""
    root = Path(root)
    skipped: Counter = Counter()
    warnings: list[str] = []
    truths = []
    for item in items:
        truth = item_to_dict(item)
        missing = "image" if not truth.get("image") else _required_missing(truth)
        if missing:
            skipped[f"item without usable {missing!r}" if missing != "task" else
                    f"item with task {truth.get('task')!r} (not ground/vqa)"] += 1
            continue
        truths.append(truth)
    if limit is not None:
        truths = truths[:limit]
    by_image: dict[str, list[dict]] = {}
    for truth in truths:
        by_image.setdefault(str(truth["image"]), []).append(truth)

    encode_text = _TextEncoder(predictor)
    records: list[dict] = []
    image_ms: list[float] = []
    started = time.perf_counter()
    images_done = 0
    for image, group in _progress(by_image.items(), len(by_image), "evaluating", progress):
        path = Path(image) if Path(image).is_absolute() else root / image
        try:
            rgb = load_rgb(path)
        except (OSError, ValueError) as error:
            skipped["image failed to load"] += len(group)
            if len(warnings) < 20:
                warnings.append(f"{image}: {error}")
            continue
        encoded = predictor.encode_image(rgb)
        image_ms.append(float(getattr(encoded, "ms", 0.0)))
        images_done += 1
        for truth in group:
            record = {"image": str(image), **truth_fields(truth)}
            text = encode_text(record["text"])
            if record["task"] == "ground":
                record.update(ground_prediction(predictor.ground(encoded, text, threshold)))
            else:
                record.update(answer_prediction(predictor.answer(encoded, text)))
            records.append(record)
    seconds = time.perf_counter() - started
    if encode_text.truncated:
        warnings.append(f"{len(encode_text.truncated)} texts were longer than the model's token "
                        "limit and were truncated")
    timing = {"seconds": seconds, "images": images_done,
              "frames_per_s": metrics.frames_per_second(images_done, seconds),
              "image_encode_ms": metrics.latency_stats(image_ms)}
    return finish_results(records, source=_source_info(predictor, kind="manifest", root=str(root),
                                                       items=len(truths)),
                          timing=timing, skipped=skipped, warnings=warnings,
                          answer_labels=answer_labels or getattr(predictor, "answers", None),
                          examples=_manifest_examples(records, root))


def _manifest_examples(records: list[dict], root: Path) -> list:
    """Up to EXAMPLE_PANELS images spread over the run, each with its first grounding and
    first VQA record (images are reloaded only for these few)."""
    images = list(dict.fromkeys(r["image"] for r in records))
    if not images:
        return []
    step = max(1, len(images) // EXAMPLE_PANELS)
    examples = []
    for image in images[::step][:EXAMPLE_PANELS]:
        mine = [r for r in records if r["image"] == image]
        picked = ([r for r in mine if r["task"] == "ground"][:1]
                  + [r for r in mine if r["task"] == "vqa"][:1])
        try:
            path = Path(image) if Path(image).is_absolute() else root / image
            examples.append((load_rgb(path), picked))
        except (OSError, ValueError):
            continue
    return examples


# ------------------------------------------------------------------------------ bag, offline
class ActiveTexts:
    """The command and question in force at a point of the recording: the last one received
    on each topic (or a fixed text given on the command line)."""

    def __init__(self, command: str | None = None, question: str | None = None):
        self.texts = {"ground": normalise_text(command) if command else None,
                      "vqa": normalise_text(question) if question else None}

    def update(self, event) -> None:
        task = {"command": "ground", "question": "vqa"}.get(event.role)
        if task:
            text = normalise_text(event.msg.data)
            self.texts[task] = text or None  # an empty text clears it, as in the node

    def active(self) -> list[tuple[str, str]]:
        return [(task, text) for task, text in self.texts.items() if text]


def _sidecar_for(bag: Path, sidecar: Path | str | None):
    path = Path(sidecar) if sidecar is not None else find_sidecar(bag)
    return read_sidecar(path)


def _bag_record(stamp_ns: int, task: str, text: str, truth_table: dict, used: set) -> dict:
    truth = truth_table.get((stamp_ns, text))
    if truth is not None and truth.get("task") == task and not _required_missing(truth):
        used.add((stamp_ns, text))
        return {"stamp_ns": stamp_ns, "labelled": True, "image": truth.get("image"),
                **truth_fields(truth)}
    return {"stamp_ns": stamp_ns, "labelled": False, "task": task, "text": text,
            "variant": "unknown"}


def _sidecar_warnings(truth_table: dict, used: set, frame_stamps: set, sidecar,
                      limited: bool = False) -> list[str]:
    """Say clearly when ground truth went unused: stamps that match no frame at all, or
    frames that never saw that text. ``limited``: reading stopped early on purpose
    (--limit), so entries after the last frame read are expected to go unused."""
    warnings = []
    if sidecar.skipped_lines:
        warnings.append(f"sidecar {sidecar.path}: {sidecar.skipped_lines} malformed lines skipped")
    last = max(frame_stamps) if frame_stamps else None
    unused = [key for key, truth in truth_table.items()
              if key not in used and truth.get("task") in ("ground", "vqa")
              and not (limited and last is not None and key[0] > last)]
    no_frame = [key for key in unused if key[0] not in frame_stamps]
    no_text = [key for key in unused if key[0] in frame_stamps]
    if truth_table and no_frame:
        warnings.append(
            f"sidecar {sidecar.path}: {len(no_frame)} of {len(truth_table)} entries have a stamp "
            f"that matches no frame in the bag (e.g. stamp {no_frame[0][0]}); the frames have "
            f"{len(frame_stamps)} stamps. Was the sidecar written for another bag, or the "
            "bag cut short?")
    if no_text:
        warnings.append(
            f"sidecar {sidecar.path}: {len(no_text)} entries match a frame but not the "
            f"command/question active on it (e.g. {no_text[0][1]!r}); they were not scored")
    return warnings


def evaluate_bag(predictor, bag: Path | str, *, sidecar: Path | str | None = None,
                 image_topic: str | None = None, command_topic: str | None = None,
                 question_topic: str | None = None, command: str | None = None,
                 question: str | None = None, limit: int | None = None,
                 threshold: float | None = None, progress: bool = False,
                 answer_labels: Sequence[str] | None = None) -> dict:
    """Offline: read the bag and run the model on every image frame with the command and
    question active at that time. Ground truth comes from the sidecar (found next to the
    bag unless given); without it, only predictions and timing are reported."""
    bag = resolve_bag_path(bag)
    side = _sidecar_for(bag, sidecar)
    fixed = command is not None or question is not None
    skipped: Counter = Counter()
    warnings: list[str] = []
    records: list[dict] = []
    used: set = set()
    frame_stamps: set = set()
    image_ms: list[float] = []
    examples: list = []
    encode_text = _TextEncoder(predictor)
    with BagSource(bag, image_topic, command_topic, question_topic, require_texts=not fixed) as source:
        active = ActiveTexts(command, question)
        total = source.image_count
        if limit is not None and total is not None:
            total = min(total, limit)
        example_every = max(1, (total or EXAMPLE_PANELS) // EXAMPLE_PANELS)
        frames = 0
        started = time.perf_counter()
        bar = _progress(None, total, "evaluating bag", progress) if progress else None
        for event in source.events():
            if event.role != "image":
                if not fixed:
                    active.update(event)
                continue
            if limit is not None and frames >= limit:
                break
            frames += 1
            if bar is not None:
                bar.update(1)
            stamp = stamp_ns_of(event.msg)
            frame_stamps.add(stamp)
            texts = active.active()
            if not texts:
                skipped["frame before any command/question"] += 1
                continue
            try:
                rgb = message_to_rgb(event.msgtype, event.msg)
            except ValueError as error:  # ImageConversionError and kin
                skipped["image failed to decode"] += 1
                if len(warnings) < 20:
                    warnings.append(f"frame {stamp}: {error}")
                continue
            encoded = predictor.encode_image(rgb)
            image_ms.append(float(getattr(encoded, "ms", 0.0)))
            frame_records = []
            for task, text in texts:
                record = _bag_record(stamp, task, text, side.truth, used)
                if task == "ground":
                    record.update(ground_prediction(predictor.ground(encoded, encode_text(text), threshold)))
                else:
                    record.update(answer_prediction(predictor.answer(encoded, encode_text(text))))
                frame_records.append(record)
            records.extend(frame_records)
            if (frames - 1) % example_every == 0 and len(examples) < EXAMPLE_PANELS:
                examples.append((rgb, frame_records))
        seconds = time.perf_counter() - started
        if bar is not None:
            bar.close()
        read = source.report.as_dict()
        topics = {"image": source.image_topic, "command": source.command_topic,
                  "question": source.question_topic}
    if read["stopped"]:
        warnings.append(read["stopped"])
    if read["salvaged"]:
        warnings.append(read["salvaged"])
    for reason, count in read["skipped"].items():
        skipped[reason] += count
    if side.path is None:
        warnings.append("no sidecar with ground truth: reporting predictions and timing only "
                        "(pass --sidecar, or write bags with essen-bag)")
    else:
        warnings.extend(_sidecar_warnings(side.truth, used, frame_stamps, side,
                                          limited=limit is not None and frames >= limit))
    timing = {"seconds": seconds, "frames": frames,
              "frames_per_s": metrics.frames_per_second(frames, seconds),
              "image_encode_ms": metrics.latency_stats(image_ms)}
    source_info = _source_info(predictor, kind="bag", bag=str(bag), topics=topics,
                               sidecar=str(side.path) if side.path else None, read=read)
    return finish_results(records, source=source_info, timing=timing, skipped=skipped,
                          warnings=warnings,
                          answer_labels=answer_labels or getattr(predictor, "answers", None),
                          examples=examples)


# ------------------------------------------------------------------------------ bag, live
def _node_command(checkpoint, namespace: str, compressed: bool, threshold, node_args) -> list[str]:
    cmd = [sys.executable, "-m", "essen_ros.ros.node", "--ros-args",
           "-r", f"__ns:={namespace}", "-r", "__node:=essen_eval_node",
           "-p", "use_sim_time:=true",
           "-p", f"image_transport:={'compressed' if compressed else 'raw'}",
           # Evaluation wants every frame: reliable delivery, nothing drawn.
           "-p", "image_reliability:=reliable", "-p", "publish_debug_image:=false"]
    if checkpoint:
        cmd += ["-p", f"checkpoint:={checkpoint}"]
    if threshold is not None:
        cmd += ["-p", f"score_threshold:={float(threshold)}"]
    for arg in node_args or ():
        cmd += ["-p", arg]
    return cmd


def live_replay(bag: Path | str, *, checkpoint: Path | str | None = None,
                sidecar: Path | str | None = None, rate: float = 1.0, attach: bool = False,
                namespace: str | None = None, image_topic: str | None = None,
                command_topic: str | None = None, question_topic: str | None = None,
                command: str | None = None, question: str | None = None,
                limit: int | None = None, threshold: float | None = None,
                publish_clock: bool = True, startup_timeout: float = 120.0,
                drain_timeout: float = 10.0, node_args: Sequence[str] = (),
                progress: bool = False, answer_labels: Sequence[str] | None = None) -> dict:
    """Replay the bag through the perception node over DDS with its recorded timing
    (``rate`` > 1 is faster), publishing ``/clock`` for ``use_sim_time``, and score the
    node's Grounding/Answer messages, matched to frames by header stamp and text.

    By default a node is started as a child process in a private namespace
    (``/essen_eval_<pid>``, so nothing else on the domain is disturbed) with ``checkpoint``.
    ``attach=True`` talks to a running node instead: frames go to
    ``<namespace>/image`` (or ``image/compressed``), texts to ``<namespace>/command`` and
    ``<namespace>/question``, results are read from ``<namespace>/grounding`` and ``/answer``
    (namespace default "/": the node's topics as launched without remapping)."""
    from essen_ros.ros.dds import apply_default_profile

    if rate <= 0:
        raise EvalError(f"--rate must be positive, got {rate}")
    bag = resolve_bag_path(bag)
    side = _sidecar_for(bag, sidecar)
    fixed = command is not None or question is not None
    # Read the selected messages first: replay timing must not wait on the disk.
    with BagSource(bag, image_topic, command_topic, question_topic, require_texts=not fixed) as source:
        events = []
        frames = 0
        for event in source.events():
            if event.role == "image":
                if limit is not None and frames >= limit:
                    break
                frames += 1
            events.append(event)
        read = source.report.as_dict()
        topics = {"image": source.image_topic, "command": source.command_topic,
                  "question": source.question_topic}
    limit_reached = limit is not None and frames >= limit
    images = [e for e in events if e.role == "image"]
    if not images:
        raise EvalError(f"bag {bag} has no readable image on {topics['image']}"
                        + (f" ({read['stopped']})" if read["stopped"] else ""))
    compressed = images[0].msgtype == COMPRESSED_TYPE

    if namespace is None:
        namespace = "/" if attach else f"/essen_eval_{os.getpid()}"
    namespace = "/" + namespace.strip("/")
    prefix = namespace.rstrip("/")
    apply_default_profile()
    node_proc = None
    log_path = None
    if not attach:
        env = apply_default_profile(dict(os.environ))
        env.setdefault("PYTHONUNBUFFERED", "1")
        import tempfile

        log_file = tempfile.NamedTemporaryFile(prefix="essen-eval-node-", suffix=".log", delete=False)
        log_path = log_file.name
        node_proc = subprocess.Popen(_node_command(checkpoint, namespace, compressed, threshold, node_args),
                                     stdout=log_file, stderr=subprocess.STDOUT, env=env)
        log_file.close()
    try:
        return _replay(events, images, topics, side, bag, read, prefix=prefix, compressed=compressed,
                       rate=rate, fixed=(command, question) if fixed else None,
                       publish_clock=publish_clock, startup_timeout=startup_timeout,
                       drain_timeout=drain_timeout, node_proc=node_proc, log_path=log_path,
                       attach=attach, progress=progress, answer_labels=answer_labels,
                       checkpoint=checkpoint, limit_reached=limit_reached)
    finally:
        if node_proc is not None:
            if node_proc.poll() is None:
                node_proc.send_signal(2)
                try:
                    node_proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    node_proc.kill()
                    node_proc.wait()
        if log_path:
            Path(log_path).unlink(missing_ok=True)


def _tail(path, lines=15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _replay(events, images, topics, side, bag, read, *, prefix, compressed, rate, fixed,
            publish_clock, startup_timeout, drain_timeout, node_proc, log_path, attach,
            progress, answer_labels, checkpoint, limit_reached) -> dict:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import String

    from essen_ros.msg import Answer, Grounding

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node(f"essen_eval_player_{os.getpid()}", context=context)
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    image_name = f"{prefix}/image" + ("/compressed" if compressed else "")
    image_pub = node.create_publisher(CompressedImage if compressed else Image, image_name, reliable)
    command_pub = node.create_publisher(String, f"{prefix}/command", reliable)
    question_pub = node.create_publisher(String, f"{prefix}/question", reliable)
    clock_pub = node.create_publisher(Clock, "/clock", 10) if publish_clock else None

    lock = threading.Lock()
    received: dict[tuple[str, int], list] = {}  # (task, stamp) -> [(msg, wall receive time)]

    def collector(task):
        def on_result(msg):
            now = time.perf_counter()
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            with lock:
                received.setdefault((task, stamp), []).append((msg, now))
        return on_result

    node.create_subscription(Grounding, f"{prefix}/grounding", collector("ground"),
                             QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    node.create_subscription(Answer, f"{prefix}/answer", collector("vqa"),
                             QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinning = threading.Event()
    spinning.set()

    def spin():
        while spinning.is_set() and context.ok():
            executor.spin_once(timeout_sec=0.05)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        _wait_for_node(node, [image_pub, command_pub, question_pub],
                       [f"{prefix}/grounding", f"{prefix}/answer"], node_proc, log_path,
                       startup_timeout, image_name, attach)
        sent, texts_at, publish_wall = _publish_timed(
            events, image_pub, command_pub, question_pub, clock_pub, rate, fixed, progress)
        expected = {stamp: texts for stamp, texts in texts_at.items() if texts}
        _drain(received, lock, expected, drain_timeout, node_proc)
    finally:
        spinning.clear()
        spinner.join(timeout=2)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)

    records, used = [], set()
    answered_stamps, e2e_ms, node_ms = set(), [], []
    mismatched = 0
    for stamp, texts in expected.items():
        for task, text in texts:
            results = received.get((task, stamp), [])
            if not results:
                continue
            msg, when = results[-1]
            echoed = normalise_text(msg.command if task == "ground" else msg.question)
            if echoed != text:
                mismatched += 1  # the node used another text than the one sent before the frame
            if msg.reason and not (task == "ground" and msg.reason.startswith("no match")):
                continue  # empty text and the like: no prediction to score
            answered_stamps.add(stamp)
            record = _bag_record(stamp, task, echoed, side.truth, used)
            if task == "ground":
                found = bool(msg.found)
                box = ([msg.box.x_offset, msg.box.y_offset, msg.box.x_offset + msg.box.width,
                        msg.box.y_offset + msg.box.height] if found else None)
                record.update(pred_found=found, pred_score=float(msg.score), pred_box=box,
                              ms=float(msg.inference_ms))
            else:
                record.update(pred_answer=msg.answer, pred_score=float(msg.score),
                              pred_top=[[a, round(float(p), 4)] for a, p in
                                        zip(list(msg.top_answers)[:3], list(msg.top_scores)[:3])],
                              ms=float(msg.inference_ms))
            latency = (when - publish_wall[stamp]) * 1000.0
            record["latency_ms"] = latency
            e2e_ms.append(latency)
            node_ms.append(float(msg.inference_ms))
            records.append(record)

    skipped: Counter = Counter(read["skipped"])
    skipped_before = sum(1 for s in sent if not texts_at.get(s))
    if skipped_before:
        skipped["frame before any command/question"] += skipped_before
    warnings = [w for w in (read["stopped"], read["salvaged"]) if w]
    if node_proc is not None and node_proc.poll() is not None:
        warnings.append(f"the node exited (status {node_proc.returncode}) during the replay; its "
                        f"last output:\n{_tail(log_path)}")
    if len(set(sent)) < len(sent):
        warnings.append(f"{len(sent) - len(set(sent))} frames repeat another frame's header stamp: "
                        "results are matched to frames by stamp, so those frames cannot be told "
                        "apart (does the camera driver fill header.stamp?)")
    dropped = metrics.dropped_frames(expected.keys(), answered_stamps)
    if dropped["dropped"]:
        warnings.append(f"{dropped['dropped']} of {dropped['sent']} frames got no result from the "
                        f"node (dropped while it was busy, or lost): a slower --rate lets it keep up")
    if mismatched:
        warnings.append(f"{mismatched} results were computed with another text than the one "
                        "published before their frame (text arrived late)")
    if side.path is None:
        warnings.append("no sidecar with ground truth: reporting predictions and latency only")
    else:
        warnings.extend(_sidecar_warnings(side.truth, used, set(sent), side,
                                          limited=limit_reached))
    replay_s = (max(publish_wall.values()) - min(publish_wall.values())) if publish_wall else 0.0
    timing = {"rate": rate, "frames": len(sent), "replay_seconds": replay_s,
              "end_to_end_latency_ms": metrics.latency_stats(e2e_ms),
              "node_inference_ms": metrics.latency_stats(node_ms),
              "dropped": dropped, "mismatched_text": mismatched}
    source_info = {"kind": "live", "bag": str(bag), "topics": topics, "attach": attach,
                   "checkpoint": str(checkpoint) if checkpoint else None,
                   "sidecar": str(side.path) if side.path else None, "read": read,
                   "node_topics": {"image": image_name, "grounding": f"{prefix}/grounding",
                                   "answer": f"{prefix}/answer"}}
    labels = answer_labels
    if labels is None:
        from essen_ros.data.vocab import ANSWERS

        labels = ANSWERS
    examples = _live_examples(images, records)
    return finish_results(records, source=source_info, timing=timing, skipped=skipped,
                          warnings=warnings, answer_labels=labels, examples=examples)


def _live_examples(images, records) -> list:
    by_stamp: dict[int, list] = {}
    for r in records:
        by_stamp.setdefault(r["stamp_ns"], []).append(r)
    stamps = [s for s in (stamp_ns_of(e.msg) for e in images) if s in by_stamp]
    step = max(1, len(stamps) // EXAMPLE_PANELS)
    wanted = set(stamps[::step][:EXAMPLE_PANELS])
    examples = []
    for event in images:
        stamp = stamp_ns_of(event.msg)
        if stamp in wanted:
            try:
                examples.append((message_to_rgb(event.msgtype, event.msg), by_stamp[stamp]))
            except ValueError:
                continue
            wanted.discard(stamp)
    return examples


def _wait_for_node(node, publishers, result_topics, node_proc, log_path, timeout, image_name,
                   attach) -> None:
    """Until the node subscribes to what we publish and publishes what we read."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node_proc is not None and node_proc.poll() is not None:
            raise EvalError(f"the node exited with status {node_proc.returncode} before the replay "
                            f"started. Its last output:\n{_tail(log_path)}")
        if (all(p.get_subscription_count() > 0 for p in publishers)
                and all(node.count_publishers(t) > 0 for t in result_topics)):
            # Discovery is symmetric only eventually: give the node's side a moment to match
            # our publishers too, or the first texts are lost.
            time.sleep(1.0)
            return
        time.sleep(0.1)
    hint = (f"Is a node running that subscribes to {image_name}? Pass --namespace, or leave out "
            "--attach to start one." if attach else f"Its last output:\n{_tail(log_path)}")
    raise EvalError(f"no node subscribed to {image_name} within {timeout:.0f} s. {hint}")


def _publish_timed(events, image_pub, command_pub, question_pub, clock_pub, rate, fixed, progress):
    """Publish the recorded messages with their recorded spacing divided by ``rate``.
    Returns the frame stamps sent, the texts active for each, and the wall time each frame
    was published (for end-to-end latency)."""
    from rosgraph_msgs.msg import Clock
    from std_msgs.msg import String

    active = ActiveTexts(*(fixed or (None, None)))
    if fixed:
        for text, pub in ((fixed[0], command_pub), (fixed[1], question_pub)):
            if text:
                pub.publish(String(data=text))
        time.sleep(0.2)
    sent, texts_at, publish_wall = [], {}, {}
    # Build the ROS messages before the clock starts: publishing must keep the recorded pace.
    outgoing = {id(e): _ros_image(e) for e in events if e.role == "image"}
    t0 = events[0].log_ns
    wall0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(1 for e in events if e.role == "image"), desc="replaying",
                   unit="frame", leave=False, file=sys.stderr)
    for event in events:
        due = wall0 + (event.log_ns - t0) / 1e9 / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if clock_pub is not None:
            clock = Clock()
            clock.clock.sec, clock.clock.nanosec = divmod(event.log_ns, 1_000_000_000)
            clock_pub.publish(clock)
        if event.role == "image":
            stamp = stamp_ns_of(event.msg)
            texts_at[stamp] = active.active()
            publish_wall[stamp] = time.perf_counter()
            image_pub.publish(outgoing[id(event)])
            sent.append(stamp)
            if bar is not None:
                bar.update(1)
        elif not fixed:
            active.update(event)
            (command_pub if event.role == "command" else question_pub).publish(String(data=event.msg.data))
    if bar is not None:
        bar.close()
    return sent, texts_at, publish_wall


def _ros_image(event):
    """A bag's image message as an rclpy message. ROS 2 bags hold the exact CDR bytes; ROS 1
    bags (other serialization, a ``seq`` in the header) are rebuilt field by field."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CompressedImage, Image

    compressed = event.msgtype == COMPRESSED_TYPE
    msg_class = CompressedImage if compressed else Image
    if not event.ros1:
        return deserialize_message(event.raw, msg_class)
    source = event.msg
    msg = msg_class()
    msg.header.stamp.sec = int(source.header.stamp.sec)
    msg.header.stamp.nanosec = int(source.header.stamp.nanosec)
    msg.header.frame_id = str(source.header.frame_id)
    if compressed:
        msg.format = str(source.format)
    else:
        msg.height, msg.width, msg.step = int(source.height), int(source.width), int(source.step)
        msg.encoding, msg.is_bigendian = str(source.encoding), int(source.is_bigendian)
    msg.data = bytes(source.data)
    return msg


def _drain(received, lock, expected, timeout, node_proc=None) -> None:
    """Wait for the results of the last frames: until every frame has its results, the
    node has exited, or nothing new arrived for ``timeout`` seconds."""
    wanted = {(task, stamp) for stamp, texts in expected.items() for task, _ in texts}
    last_count, last_change = -1, time.monotonic()
    while time.monotonic() - last_change < timeout:
        if node_proc is not None and node_proc.poll() is not None:
            return
        with lock:
            have = wanted & set(received)
        if have == wanted:
            return
        if len(have) != last_count:
            last_count, last_change = len(have), time.monotonic()
        time.sleep(0.05)


# ------------------------------------------------------------------------------ report
def write_report(results: dict, out_dir: Path | str) -> dict:
    """results.json (every number and per-item record), summary.md and the PNG plots, all
    written atomically into ``out_dir``. Returns {name: path}."""
    from essen_ros.report import write_report as _write

    return _write(results, out_dir)


def format_summary(results: dict) -> str:
    from essen_ros.report import format_summary as _format

    return _format(results)


# ------------------------------------------------------------------------------ CLI
def _load_predictor(model: Path | None, threshold: float | None, threads: int | None):
    import torch

    from essen_ros.model.checkpoint import CheckpointError, load_model
    from essen_ros.model.predictor import Predictor
    from essen_ros.paths import default_checkpoint

    if threads:
        torch.set_num_threads(threads)
    path = Path(model) if model else default_checkpoint()
    try:
        return Predictor(load_model(path), device="cpu", threshold=threshold), path
    except CheckpointError as error:
        hint = "" if model else " (the default model; pass --model PATH or set ESSEN_MODEL)"
        raise EvalError(f"{error}{hint}") from None


def _read_manifest(data: Path):
    from essen_ros.data.manifest import read_manifest

    try:
        items, report = read_manifest(data)
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise EvalError(f"cannot read dataset {data}: {error}") from None
    return items, report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="essen-eval",
        description="Evaluate the ESsEN model on a dataset (--data), a recorded bag offline "
                    "(--bag), or by replaying the bag live through the node (--bag --live). "
                    "Writes results.json, summary.md and PNG plots to --out.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="dataset folder or its annotations.jsonl")
    source.add_argument("--bag", type=Path, help="rosbag2 folder (sqlite3 or mcap) or ROS 1 .bag")
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    parser.add_argument("--model", type=Path, default=None,
                        help="checkpoint folder (default: the shipped model)")
    parser.add_argument("--limit", type=int, default=None,
                        help="at most N items (--data) or N frames (--bag)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="grounding 'found' threshold (default: the checkpoint's)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    bag = parser.add_argument_group("bags")
    bag.add_argument("--sidecar", type=Path, default=None,
                     help="ground truth JSON lines (default: BAG/truth.jsonl or BAG.truth.jsonl)")
    bag.add_argument("--image-topic", default=None, help="image topic in the bag (default: the only one)")
    bag.add_argument("--command-topic", default=None, help="std_msgs/String command topic in the bag")
    bag.add_argument("--question-topic", default=None, help="std_msgs/String question topic in the bag")
    bag.add_argument("--command", default=None, help="fixed command for every frame (bag without texts)")
    bag.add_argument("--question", default=None, help="fixed question for every frame")
    live = parser.add_argument_group("live replay")
    live.add_argument("--live", action="store_true", help="replay the bag through essen-node over DDS")
    live.add_argument("--rate", type=float, default=1.0, help="replay speed factor (default 1.0)")
    live.add_argument("--attach", action="store_true",
                      help="use a running node instead of starting one (see --namespace)")
    live.add_argument("--namespace", default=None,
                      help="namespace of the node's topics (image, command, question, grounding, "
                           "answer); default / with --attach, a private one otherwise")
    live.add_argument("--no-clock", action="store_true", help="do not publish /clock")
    live.add_argument("--startup-timeout", type=float, default=120.0,
                      help="seconds to wait for the node to come up")
    live.add_argument("--drain-timeout", type=float, default=10.0,
                      help="seconds to wait for late results after the last frame")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit <= 0:
        parser.error("--limit must be positive")
    if args.live and not args.bag:
        parser.error("--live needs --bag")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        parser.error("--threshold must be in [0, 1]")
    progress = not args.no_progress and sys.stderr.isatty()
    try:
        if args.out.exists() and not args.out.is_dir():
            raise EvalError(f"--out {args.out} is a file; give a folder for the report")
        if args.data is not None:
            if not args.data.exists():
                raise EvalError(f"dataset {args.data} does not exist")
            items, manifest_report = _read_manifest(args.data)
            predictor, model_path = _load_predictor(args.model, args.threshold, args.threads)
            root = args.data if args.data.is_dir() else args.data.parent
            results = evaluate_manifest(predictor, items, root, limit=args.limit, progress=progress)
            results["source"]["manifest"] = str(manifest_report)
            for reason, count in manifest_report.reasons.items():
                results["skipped"][f"manifest line: {reason}"] = count
            if not items:
                raise EvalError(f"no usable items in {args.data}: {manifest_report}")
        elif args.live:
            model_path = args.model
            if not args.attach:
                from essen_ros.paths import default_checkpoint

                model_path = args.model or default_checkpoint()
                if not Path(model_path).is_dir():
                    raise EvalError(f"checkpoint not found: {model_path} (pass --model PATH)")
            results = live_replay(args.bag, checkpoint=model_path, sidecar=args.sidecar,
                                  rate=args.rate, attach=args.attach, namespace=args.namespace,
                                  image_topic=args.image_topic, command_topic=args.command_topic,
                                  question_topic=args.question_topic, command=args.command,
                                  question=args.question, limit=args.limit,
                                  threshold=args.threshold, publish_clock=not args.no_clock,
                                  startup_timeout=args.startup_timeout,
                                  drain_timeout=args.drain_timeout, progress=progress)
        else:
            # Bag problems (missing topics, unreadable file) are found before the model loads.
            fixed = args.command is not None or args.question is not None
            with BagSource(args.bag, args.image_topic, args.command_topic, args.question_topic,
                           require_texts=not fixed):
                pass
            predictor, model_path = _load_predictor(args.model, args.threshold, args.threads)
            results = evaluate_bag(predictor, args.bag, sidecar=args.sidecar,
                                   image_topic=args.image_topic, command_topic=args.command_topic,
                                   question_topic=args.question_topic, command=args.command,
                                   question=args.question, limit=args.limit, progress=progress)
        results["source"]["model"] = str(model_path) if model_path else None
        try:
            paths = write_report(results, args.out)
        except OSError as error:
            raise EvalError(f"cannot write the report to {args.out}: {error}") from None
    except (EvalError, BagError) as error:
        print(f"essen-eval: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(format_summary(results))
    print(f"report: {paths['summary']} (and {', '.join(Path(p).name for k, p in paths.items() if k != 'summary')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
