"""Recorded bags for evaluation: write a rosbag2 (plus its ground-truth sidecar) from a
manifest, and read one back frame by frame.

``essen-bag --data DATASET --out BAG [--encoding jpeg] [--fps 2] [--storage mcap]``

The bag holds what a robot's recorder would: camera frames on one image topic, and the
commands and questions on ``/command`` and ``/question`` (``std_msgs/String``), each published
a quarter of a frame period before the first frame it applies to. The ground truth travels
next to it as a sidecar (``truth.jsonl`` inside the bag folder by default): one JSON line per
(frame, text) pair, keyed by the image header stamp and the text, carrying the manifest's
fields. Evaluation (``essen-eval --bag``) and live replay read both back.

Bags are pure ``rosbags`` (no ROS install needed to write or read them). Everything is written
into a temporary folder beside the target and renamed into place at the end, so an
interrupted run never leaves a half-written bag.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import shutil
import sys
import tempfile
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from essen_ros.data.manifest import load_rgb
from essen_ros.ros.image_conversion import (
    compressed_image_to_rgb,
    image_to_rgb,
    rgb_to_fields,
)

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
STRING_TYPE = "std_msgs/msg/String"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)

DEFAULT_IMAGE_TOPIC = "/camera/image_raw"
DEFAULT_COMMAND_TOPIC = "/command"
DEFAULT_QUESTION_TOPIC = "/question"
SIDECAR_NAME = "truth.jsonl"

RAW_ENCODINGS = ("rgb8", "bgr8", "mono8")
COMPRESSED_ENCODINGS = ("jpeg", "png")
# "-padded" variants store rows with extra bytes at the end (step > width * channels), as
# many V4L2 cameras do; readers that reshape by width instead of step shear the image.
ENCODINGS = (*RAW_ENCODINGS, *(f"{e}-padded" for e in RAW_ENCODINGS), *COMPRESSED_ENCODINGS)
DEFAULT_ROW_PADDING = 24
PADDING_BYTE = 0xAB  # visible garbage, so a shear is obvious in a test or a viewer

# Start of bag time: a fixed, realistic epoch keeps bags written twice identical.
DEFAULT_START_NS = 1_700_000_000 * 1_000_000_000

# Manifest fields copied into the sidecar (and used as ground truth by evaluation).
TRUTH_FIELDS = ("image", "task", "text", "variant", "found", "box", "target", "objects",
                "answer", "kind", "match", "scene")


class BagError(Exception):
    """A user-facing problem with a bag or its options: the message says what to do."""


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


# ------------------------------------------------------------------------------ items
def item_to_dict(item) -> dict:
    """Manifest Item, or a plain dict, -> dict of manifest fields (as on a manifest line)."""
    if isinstance(item, dict):
        return dict(item)
    if hasattr(item, "to_dict"):
        return item.to_dict()
    if dataclasses.is_dataclass(item):
        return dataclasses.asdict(item)
    return dict(vars(item))


# ------------------------------------------------------------------------------ schedule
@dataclass
class ScheduledFrame:
    """One camera frame of the bag and the texts newly published just before it."""

    image: str                     # manifest image path (relative to the dataset folder)
    stamp_ns: int
    command: dict | None = None    # manifest item of the command that starts here
    question: dict | None = None   # manifest item of the question that starts here


def plan_schedule(items: Sequence[dict], fps: float, start_ns: int = DEFAULT_START_NS,
                  max_frames: int | None = None) -> list[ScheduledFrame]:
    """Frames in manifest image order. An image with g grounding and q VQA items is shown
    for max(g, q, 1) consecutive frames; frame j brings its j-th command and j-th question
    (a text stays active until the next one arrives, as on a robot)."""
    if fps <= 0:
        raise BagError(f"--fps must be positive, got {fps}")
    by_image: OrderedDict[str, dict[str, list]] = OrderedDict()
    for item in items:
        slot = by_image.setdefault(item["image"], {"ground": [], "vqa": []})
        if item.get("task") in slot:
            slot[item["task"]].append(item)
    period_ns = int(round(1e9 / fps))
    # Leave room before the first frame for its command/question.
    first_ns = start_ns + period_ns
    frames: list[ScheduledFrame] = []
    for image, tasks in by_image.items():
        for j in range(max(len(tasks["ground"]), len(tasks["vqa"]), 1)):
            if max_frames is not None and len(frames) >= max_frames:
                return frames
            frames.append(ScheduledFrame(
                image=image, stamp_ns=first_ns + len(frames) * period_ns,
                command=tasks["ground"][j] if j < len(tasks["ground"]) else None,
                question=tasks["vqa"][j] if j < len(tasks["vqa"]) else None))
    return frames


# ------------------------------------------------------------------------------ messages
def _stamp(typestore, stamp_ns: int):
    Time = typestore.types["builtin_interfaces/msg/Time"]
    return Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)


def compress_rgb(rgb: np.ndarray, encoding: str, jpeg_quality: int = 95) -> bytes:
    """RGB array -> JPEG or PNG file bytes (standard colour order in the file)."""
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    picture = PILImage.fromarray(rgb, "RGB")
    if encoding == "jpeg":
        picture.save(buffer, format="JPEG", quality=jpeg_quality)
    else:
        picture.save(buffer, format="PNG")
    return buffer.getvalue()


def make_image_message(typestore, rgb: np.ndarray, encoding: str, stamp_ns: int,
                       frame_id: str = "camera", row_padding: int = DEFAULT_ROW_PADDING,
                       jpeg_quality: int = 95, compressed: bytes | None = None):
    """RGB array -> (msgtype, rosbags message) in one of ``ENCODINGS``. ``compressed``:
    the already compressed bytes of ``rgb``, to reuse across frames of one image."""
    Header = typestore.types["std_msgs/msg/Header"]
    header = Header(stamp=_stamp(typestore, stamp_ns), frame_id=frame_id)
    if encoding in COMPRESSED_ENCODINGS:
        if compressed is None:
            compressed = compress_rgb(rgb, encoding, jpeg_quality)
        # image_transport's format string: original encoding; codec and the decoded order.
        CompressedImage = typestore.types[COMPRESSED_TYPE]
        msg = CompressedImage(header=header, format=f"rgb8; {encoding} compressed bgr8",
                              data=np.frombuffer(compressed, dtype=np.uint8))
        return COMPRESSED_TYPE, msg
    base, _, padded = encoding.partition("-")
    if base not in RAW_ENCODINGS or padded not in ("", "padded"):
        raise BagError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    fields = rgb_to_fields(rgb, base)
    data = np.frombuffer(fields["data"], dtype=np.uint8)
    step = fields["step"]
    if padded:
        rows = data.reshape(fields["height"], step)
        pad = np.full((fields["height"], row_padding), PADDING_BYTE, np.uint8)
        data = np.concatenate([rows, pad], axis=1).reshape(-1)
        step += row_padding
    Image = typestore.types[IMAGE_TYPE]
    msg = Image(header=header, height=fields["height"], width=fields["width"],
                encoding=fields["encoding"], is_bigendian=fields["is_bigendian"],
                step=step, data=data)
    return IMAGE_TYPE, msg


def message_to_rgb(msgtype: str, msg) -> np.ndarray:
    """Decode an image message read from a bag with the node's own converter."""
    if msgtype == COMPRESSED_TYPE:
        return compressed_image_to_rgb(msg)
    return image_to_rgb(msg)


def stamp_ns_of(msg) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


# ------------------------------------------------------------------------------ writing
@dataclass
class WriteSummary:
    bag: Path
    sidecar: Path
    frames: int
    commands: int
    questions: int
    truth_lines: int
    skipped_images: dict = field(default_factory=dict)   # image path -> reason
    skipped_items: int = 0                               # caption items and the like


def _atomic_target(path: Path) -> Path:
    """Temporary sibling of ``path`` on the same file system (rename is then atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))


def write_bag(items: Sequence, root: Path | str, out: Path | str, *, encoding: str = "rgb8",
              fps: float = 2.0, storage: str = "sqlite3", image_topic: str | None = None,
              command_topic: str = DEFAULT_COMMAND_TOPIC,
              question_topic: str = DEFAULT_QUESTION_TOPIC, frame_id: str = "camera",
              sidecar: Path | str | None = None, start_ns: int = DEFAULT_START_NS,
              max_frames: int | None = None, row_padding: int = DEFAULT_ROW_PADDING,
              jpeg_quality: int = 95, progress: bool = False) -> WriteSummary:
    """Write ``out`` (a rosbag2 folder) and its sidecar from manifest items whose image paths
    are relative to ``root``. Raises BagError for bad options or an existing target."""
    from rosbags.rosbag2 import Writer
    from rosbags.rosbag2.enums import StoragePlugin

    out = Path(out)
    if out.exists():
        raise BagError(f"{out} exists already; choose a new --out (bags are never overwritten)")
    if encoding not in ENCODINGS:
        raise BagError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    plugins = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
    if storage not in plugins:
        raise BagError(f"unknown storage {storage!r}; choose sqlite3 or mcap")
    if image_topic is None:
        image_topic = DEFAULT_IMAGE_TOPIC + ("/compressed" if encoding in COMPRESSED_ENCODINGS else "")
    if sidecar is not None and Path(sidecar).exists():
        raise BagError(f"sidecar {sidecar} exists already; choose a new --sidecar")
    root = Path(root)
    records = [item_to_dict(i) for i in items]
    usable = [r for r in records if r.get("task") in ("ground", "vqa")]
    frames = plan_schedule(usable, fps, start_ns, max_frames)
    lead_ns = int(round(0.25e9 / fps))
    typestore = _typestore()
    String = typestore.types[STRING_TYPE]

    staging = _atomic_target(out)
    staged_bag = staging / out.name
    sidecar_target = Path(sidecar) if sidecar is not None else out / SIDECAR_NAME
    # An external sidecar is staged beside its target, so the final rename stays atomic.
    staged_sidecar = (staged_bag / SIDECAR_NAME if sidecar is None
                      else sidecar_target.parent / f".{sidecar_target.name}.partial")
    summary = WriteSummary(bag=out, sidecar=sidecar_target, frames=0, commands=0, questions=0,
                           truth_lines=0, skipped_items=len(records) - len(usable))
    truth_lines: list[str] = []
    try:
        writer = Writer(staged_bag, version=9, storage_plugin=plugins[storage])
        writer.open()
        image_conn = None
        command_conn = writer.add_connection(command_topic, STRING_TYPE, typestore=typestore)
        question_conn = writer.add_connection(question_topic, STRING_TYPE, typestore=typestore)
        cache: dict[str, np.ndarray | None] = {}
        compressed_cache: dict[str, bytes] = {}
        iterator = frames
        if progress:
            from tqdm import tqdm

            iterator = tqdm(frames, desc="writing bag", unit="frame")
        for frame in iterator:
            if frame.image not in cache:
                # Frames of one image are consecutive: keep only the current image.
                cache.clear()
                compressed_cache.clear()
                try:
                    cache[frame.image] = load_rgb(root / frame.image)
                except (OSError, ValueError) as error:
                    cache[frame.image] = None
                    summary.skipped_images[frame.image] = str(error)
            rgb = cache[frame.image]
            if rgb is None:
                continue
            for item, conn, kind in ((frame.command, command_conn, "commands"),
                                     (frame.question, question_conn, "questions")):
                if item is None:
                    continue
                writer.write(conn, frame.stamp_ns - lead_ns,
                             typestore.serialize_cdr(String(data=item["text"]), STRING_TYPE))
                setattr(summary, kind, getattr(summary, kind) + 1)
                truth = {"stamp_ns": frame.stamp_ns, "sec": frame.stamp_ns // 1_000_000_000,
                         "nanosec": frame.stamp_ns % 1_000_000_000}
                truth.update({k: item[k] for k in TRUTH_FIELDS if k in item})
                truth_lines.append(json.dumps(truth))
            if encoding in COMPRESSED_ENCODINGS and frame.image not in compressed_cache:
                compressed_cache[frame.image] = compress_rgb(rgb, encoding, jpeg_quality)
            msgtype, msg = make_image_message(typestore, rgb, encoding, frame.stamp_ns, frame_id,
                                              row_padding, jpeg_quality,
                                              compressed_cache.get(frame.image))
            if image_conn is None:
                image_conn = writer.add_connection(image_topic, msgtype, typestore=typestore)
            writer.write(image_conn, frame.stamp_ns, typestore.serialize_cdr(msg, msgtype))
            summary.frames += 1
        writer.close()
        staged_sidecar.parent.mkdir(parents=True, exist_ok=True)
        staged_sidecar.write_text("".join(line + "\n" for line in truth_lines))
        summary.truth_lines = len(truth_lines)
        if sidecar is not None:
            staged_sidecar.replace(sidecar_target)
        staged_bag.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if sidecar is not None:
            staged_sidecar.unlink(missing_ok=True)
    return summary


# ------------------------------------------------------------------------------ reading
@dataclass
class BagEvent:
    """One selected message from a bag, in recording order."""

    role: str        # "image", "command" or "question"
    topic: str
    msgtype: str
    log_ns: int      # time the recorder received it
    raw: bytes       # bytes as recorded: CDR (ROS 2 bags) or ROS 1 serialization
    msg: object      # deserialized (rosbags dataclass)
    ros1: bool = False


@dataclass
class BagReadReport:
    """What was read, what was skipped and why, and where reading stopped early."""

    messages: int = 0
    by_role: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)   # reason -> count
    ignored_topics: dict = field(default_factory=dict)  # topic -> (type, count) not used
    stopped: str | None = None                          # why reading ended early, if it did
    salvaged: str | None = None                         # set when the index was unreadable

    def as_dict(self) -> dict:
        return {"messages": self.messages, "by_role": dict(self.by_role),
                "skipped": dict(self.skipped), "ignored_topics": self.ignored_topics,
                "stopped": self.stopped, "salvaged": self.salvaged}


def _topic_listing(topics: dict) -> str:
    if not topics:
        return "  (none)"
    return "\n".join(f"  {name}  [{info[0]}, {info[1]} messages]" for name, info in sorted(topics.items()))


def resolve_bag_path(path: Path | str) -> Path:
    """A rosbag2 is a folder; users often point at the storage file inside it instead."""
    path = Path(path)
    if path.is_file() and path.suffix in (".db3", ".mcap") and (path.parent / "metadata.yaml").is_file():
        return path.parent
    return path


class BagSource:
    """An opened bag with its image / command / question topics chosen.

    Topics are taken from the arguments, else found by type and name: the one image topic
    (``sensor_msgs/Image`` or ``CompressedImage``), and ``std_msgs/String`` topics whose last
    name part is ``command`` / ``question``. Anything ambiguous or missing raises BagError
    listing the bag's topics and the flag to pass.

    A bag whose index cannot be opened (recorder killed: no metadata.yaml, MCAP without its
    summary, truncated SQLite file) is salvaged by scanning its storage file in recording
    order; ``report.stopped`` then says where the readable part ended."""

    def __init__(self, path: Path | str, image_topic: str | None = None,
                 command_topic: str | None = None, question_topic: str | None = None,
                 require_texts: bool = True):
        self.path = resolve_bag_path(path)
        if not self.path.exists():
            raise BagError(f"bag {self.path} does not exist")
        self.report = BagReadReport()
        self._typestore = _typestore()
        self._reader = None
        self._salvage = None
        try:
            from rosbags.highlevel import AnyReader

            reader = AnyReader([self.path], default_typestore=self._typestore)
            reader.open()
            self._reader = reader
        except Exception as error:  # noqa: BLE001 - any index failure: try to salvage
            self._salvage = _Salvage.open(self.path, error)
            self.report.salvaged = self._salvage.note
        if self._reader is not None:
            self.topics = {}
            for conn in self._reader.connections:
                msgtype, count = self.topics.get(conn.topic, (conn.msgtype, 0))
                self.topics[conn.topic] = (msgtype, count + (conn.msgcount or 0))
        else:
            self.topics = self._salvage.topics
        self.image_topic = self._choose_image_topic(image_topic)
        self.command_topic = self._choose_text_topic(command_topic, "command")
        self.question_topic = self._choose_text_topic(question_topic, "question")
        if require_texts and not self.command_topic and not self.question_topic:
            raise BagError(
                f"bag {self.path} has no command or question topic (std_msgs/String named "
                f".../command or .../question). Topics in the bag:\n{_topic_listing(self.topics)}\n"
                "Pass --command-topic / --question-topic, or a fixed --command TEXT / --question TEXT.")
        self.report.ignored_topics = {
            t: list(info) for t, info in self.topics.items()
            if t not in (self.image_topic, self.command_topic, self.question_topic)}

    def _choose_image_topic(self, wanted: str | None) -> str:
        if wanted:
            if wanted not in self.topics:
                raise BagError(f"image topic {wanted!r} is not in bag {self.path}. Topics in the "
                               f"bag:\n{_topic_listing(self.topics)}\nPass one of them as --image-topic.")
            if self.topics[wanted][0] not in IMAGE_TYPES:
                raise BagError(f"topic {wanted!r} carries {self.topics[wanted][0]}, not an image "
                               f"(sensor_msgs/Image or CompressedImage). Topics in the bag:\n"
                               f"{_topic_listing(self.topics)}")
            return wanted
        images = [t for t, (msgtype, _) in self.topics.items() if msgtype in IMAGE_TYPES]
        if len(images) == 1:
            return images[0]
        if not images:
            raise BagError(f"bag {self.path} has no image topic (sensor_msgs/Image or "
                           f"CompressedImage). Topics in the bag:\n{_topic_listing(self.topics)}")
        raise BagError(f"bag {self.path} has several image topics: {', '.join(sorted(images))}. "
                       "Pass the one to evaluate as --image-topic.")

    def _choose_text_topic(self, wanted: str | None, role: str) -> str | None:
        if wanted:
            if wanted not in self.topics:
                raise BagError(f"{role} topic {wanted!r} is not in bag {self.path}. Topics in the "
                               f"bag:\n{_topic_listing(self.topics)}\nPass one of them as --{role}-topic.")
            if self.topics[wanted][0] != STRING_TYPE:
                raise BagError(f"{role} topic {wanted!r} carries {self.topics[wanted][0]}, "
                               f"expected {STRING_TYPE}. Pass another --{role}-topic.")
            return wanted
        matches = [t for t, (msgtype, _) in self.topics.items()
                   if msgtype == STRING_TYPE and t.rstrip("/").rsplit("/", 1)[-1] == role]
        if len(matches) > 1:
            raise BagError(f"bag {self.path} has several {role} topics: {', '.join(sorted(matches))}. "
                           f"Pass one as --{role}-topic.")
        return matches[0] if matches else None

    @property
    def is_ros1(self) -> bool:
        return self._reader is not None and not self._reader.is2

    @property
    def image_count(self) -> int | None:
        """Image messages the index announces (None when salvaging: not known upfront)."""
        return self.topics[self.image_topic][1]

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _raw_messages(self, roles: dict) -> Iterator[tuple[str, str, int, bytes]]:
        if self._reader is not None:
            connections = [c for c in self._reader.connections if c.topic in roles]
            for conn, log_ns, raw in self._reader.messages(connections=connections):
                yield conn.topic, conn.msgtype, log_ns, raw
        else:
            yield from self._salvage.messages(set(roles))

    def _deserialize(self, raw: bytes, msgtype: str):
        if self._reader is not None:
            return self._reader.deserialize(raw, msgtype)
        return self._typestore.deserialize_cdr(raw, msgtype)

    def events(self) -> Iterator[BagEvent]:
        """Selected messages in time order. Messages that fail to deserialize are skipped
        and counted; a read error (corrupt or truncated file) ends the stream and is recorded
        in ``report.stopped`` with the position reached."""
        roles = {self.image_topic: "image"}
        if self.command_topic:
            roles[self.command_topic] = "command"
        if self.question_topic:
            roles[self.question_topic] = "question"
        first_ns = last_ns = None
        iterator = self._raw_messages(roles)
        while True:
            try:
                topic, msgtype, log_ns, raw = next(iterator)
            except StopIteration:
                break
            except Exception as error:  # noqa: BLE001 - storage errors differ per plugin
                self.report.stopped = _stopped_note(self.report.messages, first_ns, last_ns, error)
                return
            self.report.messages += 1
            first_ns = log_ns if first_ns is None else first_ns
            last_ns = log_ns
            raw = bytes(raw)
            try:
                msg = self._deserialize(raw, msgtype)
            except Exception:  # noqa: BLE001 - garbage bytes or unknown types raise anything
                self.report.skipped[f"undecodable {msgtype} message"] += 1
                continue
            role = roles[topic]
            self.report.by_role[role] += 1
            yield BagEvent(role, topic, msgtype, log_ns, raw, msg, ros1=self.is_ros1)
        if self._salvage is not None and self._salvage.stopped:
            self.report.stopped = _stopped_note(self.report.messages, first_ns, last_ns,
                                                self._salvage.stopped)


def _stopped_note(count: int, first_ns: int | None, last_ns: int | None, error) -> str:
    where = (f"after {count} messages, {(last_ns - first_ns) / 1e9:.3f} s into the recording "
             f"(bag time {last_ns / 1e9:.3f})" if last_ns is not None else "before the first message")
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return f"reading stopped {where}: {reason}"


class _Salvage:
    """Read what is readable from a rosbag2 storage file without its index."""

    def __init__(self, path: Path, kind: str, note: str):
        self.path, self.kind, self.note = path, kind, note
        self.topics: dict[str, tuple[str, int | None]] = {}
        self.stopped: str | None = None

    @classmethod
    def open(cls, bag: Path, error: Exception) -> _Salvage:
        files = [bag] if bag.is_file() else sorted(
            p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))
        if not files:
            raise BagError(f"cannot open bag {bag}: {error} (and no .db3 or .mcap file to salvage)")
        if len(files) > 1:
            raise BagError(f"cannot open bag {bag}: {error} (several storage files; salvaging "
                           "a split bag is not supported)")
        storage = files[0]
        note = f"bag index unreadable ({error}); salvaging {storage.name} by scanning it"
        salvage = cls(storage, "mcap" if storage.suffix == ".mcap" else "sqlite3", note)
        try:
            salvage._scan_topics()
        except BagError:
            raise
        except Exception as scan_error:  # noqa: BLE001
            raise BagError(f"cannot open bag {bag}: {error}; salvage failed too: {scan_error}") from None
        return salvage

    # -- SQLite: fix the page count in the header of a copy, then walk rows by id until the
    # first unreadable page (rows are stored in recording order).
    def _sqlite_connect(self):
        import sqlite3
        import struct

        copy = Path(tempfile.mkdtemp(prefix="essen-salvage-")) / "bag.db3"
        shutil.copyfile(self.path, copy)
        with copy.open("r+b") as handle:
            header = handle.read(100)
            if not header.startswith(b"SQLite format 3\0"):
                raise BagError(f"{self.path} is not an SQLite database")
            page_size = struct.unpack(">H", header[16:18])[0]
            page_size = 65536 if page_size == 1 else page_size
            pages = copy.stat().st_size // page_size
            handle.seek(28)
            handle.write(struct.pack(">I", pages))
            handle.truncate(pages * page_size)
        self._sqlite_copy = copy
        return sqlite3.connect(f"file:{copy}?mode=ro", uri=True)

    def _scan_topics(self) -> None:
        if self.kind == "sqlite3":
            connection = self._sqlite_connect()
            rows = connection.execute("SELECT id, name, type FROM topics").fetchall()
            self._topic_ids = {row[0]: (row[1], row[2]) for row in rows}
            self.topics = {name: (msgtype, None) for name, msgtype in self._topic_ids.values()}
            connection.close()
        else:
            for _ in self._mcap_records(data=False):
                pass  # the scan fills self.topics, with message counts

    def messages(self, topics: set) -> Iterator[tuple[str, str, int, bytes]]:
        self.stopped = None
        if self.kind == "sqlite3":
            yield from self._sqlite_messages(topics)
        else:
            for topic, msgtype, log_ns, raw in self._mcap_records(data=True):
                if topic in topics:
                    yield topic, msgtype, log_ns, raw

    def _sqlite_messages(self, topics: set):
        connection = self._sqlite_connect()
        last_id = 0
        try:
            while True:
                try:
                    row = connection.execute(
                        "SELECT id, topic_id, timestamp, data FROM messages WHERE id > ? "
                        "ORDER BY id LIMIT 1", (last_id,)).fetchone()
                except Exception as error:  # noqa: BLE001 - sqlite3.DatabaseError and kin
                    self.stopped = f"storage file damaged after row {last_id}: {error}"
                    return
                if row is None:
                    return
                last_id, topic_id, log_ns, data = row
                topic, msgtype = self._topic_ids.get(topic_id, (None, None))
                if topic in topics:
                    yield topic, msgtype, int(log_ns), bytes(data)
        finally:
            connection.close()
            shutil.rmtree(self._sqlite_copy.parent, ignore_errors=True)

    # -- MCAP: records are opcode (1 byte), length (uint64), content; messages may sit in
    # chunks. Scan linearly until the data ends or a record is cut off.
    def _mcap_records(self, data: bool):
        import struct

        from rosbags.rosbag2.storage_mcap import DECOMPRESSORS

        self._schemas: dict[int, str] = {}
        self._channels: dict[int, tuple[str, str]] = {}
        counts: Counter = Counter()

        def string(buf, pos):
            (size,) = struct.unpack_from("<I", buf, pos)
            return bytes(buf[pos + 4:pos + 4 + size]).decode(), pos + 4 + size

        def records(buf, pos, end, allow_cut_chunk=False):
            while pos + 9 <= end:
                opcode = buf[pos]
                (size,) = struct.unpack_from("<Q", buf, pos + 1)
                if pos + 9 + size > end:
                    if opcode == 0x06 and allow_cut_chunk:
                        # An uncompressed chunk cut short still holds whole messages.
                        yield opcode, buf[pos + 9:end]
                    raise ValueError(f"record at byte {pos} is cut off")
                yield opcode, buf[pos + 9:pos + 9 + size]
                pos += 9 + size
            if pos != end:
                raise ValueError(f"data ends inside a record header at byte {pos}")

        def handle(opcode, body):
            if opcode == 0x03:  # Schema
                (schema_id,) = struct.unpack_from("<H", body, 0)
                self._schemas[schema_id], _ = string(body, 2)
            elif opcode == 0x04:  # Channel
                channel_id, schema_id = struct.unpack_from("<HH", body, 0)
                topic, _ = string(body, 4)
                self._channels[channel_id] = (topic, self._schemas.get(schema_id, ""))
            elif opcode == 0x05:  # Message
                channel_id, _seq, log_ns = struct.unpack_from("<HIQ", body, 0)
                if channel_id in self._channels:
                    topic, msgtype = self._channels[channel_id]
                    counts[topic] += 1
                    return topic, msgtype, log_ns, bytes(body[22:]) if data else b""
            return None

        buf = memoryview(self.path.read_bytes())
        magic = b"\x89MCAP0\r\n"
        if bytes(buf[:8]) != magic:
            raise BagError(f"{self.path} is not an MCAP file")
        # A complete file ends with the same magic; without it, stop at whatever is cut off.
        end = len(buf) - 8 if bytes(buf[-8:]) == magic and len(buf) > 16 else len(buf)
        try:
            for opcode, body in records(buf, 8, end, allow_cut_chunk=True):
                if opcode == 0x02:  # Footer: the data section is over
                    break
                if opcode == 0x06:  # Chunk
                    _start, _end, raw_size, _crc = struct.unpack_from("<QQQI", body, 0)
                    compression, pos = string(body, 28)
                    (packed_size,) = struct.unpack_from("<Q", body, pos)
                    packed = bytes(body[pos + 8:pos + 8 + packed_size])
                    cut = len(packed) != packed_size
                    if cut and compression:
                        raise ValueError("a compressed chunk is cut off")
                    inner = packed if cut else DECOMPRESSORS[compression](packed, raw_size)
                    try:
                        for inner_opcode, inner_body in records(memoryview(inner), 0, len(inner)):
                            found = handle(inner_opcode, inner_body)
                            if found:
                                yield found
                    except ValueError:
                        if not cut:
                            raise
                        # The rest of the cut chunk is gone; the outer scan reports where.
                else:
                    found = handle(opcode, body)
                    if found:
                        yield found
        except (ValueError, KeyError, struct.error) as error:
            self.stopped = f"storage file cut off: {error}"
        if not data:
            self.topics = {t: (m, counts[t]) for t, m in self._channels.values()}


# ------------------------------------------------------------------------------ sidecar
@dataclass
class Sidecar:
    truth: dict            # (stamp_ns, text) -> manifest-field dict
    skipped_lines: int
    path: Path | None


def find_sidecar(bag: Path) -> Path | None:
    for candidate in (bag / SIDECAR_NAME, bag.with_name(bag.name + ".truth.jsonl")):
        if candidate.is_file():
            return candidate
    return None


def read_sidecar(path: Path | str | None) -> Sidecar:
    """Ground truth keyed by (image stamp in ns, text). Lines without a stamp, text or
    task, or with malformed JSON, are skipped and counted."""
    if path is None:
        return Sidecar({}, 0, None)
    path = Path(path)
    if not path.is_file():
        raise BagError(f"sidecar {path} does not exist")
    truth, skipped = {}, 0
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                if "stamp_ns" in entry:
                    stamp = int(entry["stamp_ns"])
                else:
                    stamp = int(entry["sec"]) * 1_000_000_000 + int(entry["nanosec"])
                key = (stamp, str(entry["text"]))
                if entry.get("task") not in ("ground", "vqa", "caption"):
                    raise KeyError("task")
            except (ValueError, KeyError, TypeError):
                skipped += 1
                continue
            truth[key] = entry
    return Sidecar(truth, skipped, path)


# ------------------------------------------------------------------------------ CLI
def read_items(data: Path):
    """Manifest items and the folder their image paths are relative to."""
    from essen_ros.data.manifest import read_manifest

    items, report = read_manifest(data)
    root = data if data.is_dir() else data.parent
    return items, root, report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="essen-bag",
        description="Write a rosbag2 of a dataset's images with its commands and questions on "
                    "std_msgs/String topics, plus a ground-truth sidecar (JSON lines keyed by "
                    "image stamp and text) for essen-eval --bag.")
    parser.add_argument("--data", required=True, type=Path,
                        help="dataset folder or its annotations.jsonl")
    parser.add_argument("--out", required=True, type=Path, help="bag folder to create (must not exist)")
    parser.add_argument("--encoding", default="rgb8", choices=ENCODINGS,
                        help="image encoding: raw rgb8/bgr8/mono8 (-padded: rows longer than the "
                             "pixels), or jpeg/png CompressedImage (default rgb8)")
    parser.add_argument("--fps", type=float, default=2.0, help="frame rate in bag time (default 2)")
    parser.add_argument("--storage", default="sqlite3", choices=("sqlite3", "mcap"))
    parser.add_argument("--limit", type=int, default=None, help="at most this many frames")
    parser.add_argument("--image-topic", default=None,
                        help=f"default {DEFAULT_IMAGE_TOPIC} (+ /compressed for jpeg/png)")
    parser.add_argument("--command-topic", default=DEFAULT_COMMAND_TOPIC)
    parser.add_argument("--question-topic", default=DEFAULT_QUESTION_TOPIC)
    parser.add_argument("--frame-id", default="camera")
    parser.add_argument("--sidecar", type=Path, default=None,
                        help=f"where to write the ground truth (default OUT/{SIDECAR_NAME})")
    parser.add_argument("--row-padding", type=int, default=DEFAULT_ROW_PADDING,
                        help="extra bytes per row for the -padded encodings")
    parser.add_argument("--jpeg-quality", type=int, default=95)
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit <= 0:
        parser.error("--limit must be positive")
    if args.row_padding <= 0:
        parser.error("--row-padding must be positive")
    try:
        if not args.data.exists():
            raise BagError(f"dataset {args.data} does not exist")
        items, root, report = read_items(args.data)
        if not items:
            raise BagError(f"no usable items in {args.data} ({report})")
        summary = write_bag(items, root, args.out, encoding=args.encoding, fps=args.fps,
                            storage=args.storage, image_topic=args.image_topic,
                            command_topic=args.command_topic, question_topic=args.question_topic,
                            frame_id=args.frame_id, sidecar=args.sidecar, max_frames=args.limit,
                            row_padding=args.row_padding, jpeg_quality=args.jpeg_quality,
                            progress=sys.stderr.isatty())
    except BagError as error:
        print(f"essen-bag: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {summary.bag}: {summary.frames} frames ({args.encoding}, {args.fps:g} fps, "
          f"{args.storage}), {summary.commands} commands, {summary.questions} questions")
    print(f"ground truth: {summary.sidecar} ({summary.truth_lines} lines)")
    if summary.skipped_images:
        print(f"skipped {len(summary.skipped_images)} images that failed to load, e.g. "
              f"{next(iter(summary.skipped_images.items()))}")
    if summary.skipped_items:
        print(f"skipped {summary.skipped_items} items that are neither grounding nor VQA (captions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
