"""The ESsEN perception node (``essen-node``): camera frames + text in, groundings and
answers out.

Threads: the executor (main thread) only stores the newest frame and the latest
command/question; one worker thread converts the frame and runs the model. A frame that
arrives while the worker is busy replaces the stored one (counted as dropped), so the output
lags the camera by at most one inference and no frame is processed twice. The Query service
runs on the executor thread and shares the model through a lock.

Topics (relative, remap as usual): subscribes ``image`` (sensor_msgs/Image) or
``image/compressed`` (sensor_msgs/CompressedImage, parameter ``image_transport``),
``command`` and ``question`` (std_msgs/String); publishes ``grounding``, ``answer``,
``debug_image`` (only while subscribed) and ``/diagnostics`` (1 Hz); serves ``query``.
"""
from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.clock import Clock, ClockType
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_policy_name_from_kind)
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest
from std_msgs.msg import String

from essen_ros.msg import Answer, Candidate, Grounding
from essen_ros.paths import default_checkpoint
from essen_ros.ros.runtime import (EXIT_STARTUP_ERROR, StartupError, parameter_error,  # noqa: F401
                                   run_node)
from essen_ros.ros.image_conversion import (DEFAULT_MAX_PIXELS, ImageConversionError,
                                            SUPPORTED_ENCODINGS, compressed_image_to_rgb,
                                            image_to_rgb, is_supported_encoding,
                                            rgb_to_image_msg)
from essen_ros.srv import Query

NODE_NAME = "essen_node"
# Exit status when the node cannot start (bad checkpoint or parameter): distinct from 1,
# which is what an unexpected exception gives.
# Longer prompts are cut before tokenisation: a megabyte of text must not stall the worker.
MAX_PROMPT_CHARS = 1000
LOGGED_PROMPT_CHARS = 160  # the log shows this much of a prompt; results carry all of it
ERROR_THROTTLE_S = 5.0
QUESTION_WORDS = {"what", "which", "how", "is", "are", "does", "do", "can", "who", "where",
                  "there", "was", "were", "has", "have", "why", "when", "whose"}




# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: object
    description: str
    read_only: bool
    value_range: tuple | None = None  # (low, high) inclusive, int or float
    choices: tuple | None = None      # allowed string values, "" included if allowed


PARAMS = (
    ParamSpec("checkpoint", "", "Checkpoint folder (config.yaml, model.safetensors, "
              "tokenizer/). Empty: the shipped model (models/essen-default, or $ESSEN_MODEL).",
              read_only=True),
    ParamSpec("device", "cpu", "Torch device for inference, e.g. cpu or cuda:0.",
              read_only=True),
    ParamSpec("num_threads", 0, "Torch intra-op threads; 0 keeps torch's default "
              "(OMP_NUM_THREADS or the core count).", read_only=True, value_range=(0, 256)),
    ParamSpec("image_transport", "raw", "raw: subscribe to 'image' (sensor_msgs/Image); "
              "compressed: subscribe to 'image/compressed' (sensor_msgs/CompressedImage).",
              read_only=True, choices=("raw", "compressed")),
    ParamSpec("image_reliability", "best_effort", "QoS reliability of the image subscription. "
              "best_effort accepts both best-effort and reliable cameras; reliable only "
              "reliable ones.", read_only=True, choices=("best_effort", "reliable")),
    ParamSpec("image_qos_depth", 1, "QoS history depth of the image subscription (the node "
              "keeps only the newest frame anyway).", read_only=True, value_range=(1, 100)),
    ParamSpec("encoding_override", "", "Interpret raw images as this encoding instead of "
              "their encoding field (for drivers that publish a wrong one). Empty: use the "
              "message's.", read_only=False, choices=("",) + SUPPORTED_ENCODINGS),
    ParamSpec("max_pixels", DEFAULT_MAX_PIXELS, "Frames with more pixels (width * height) are "
              "refused before anything is allocated.", read_only=False,
              value_range=(1, 1 << 30)),
    ParamSpec("score_threshold", None, "Grounding score at or above which found=true. "
              "Default: the checkpoint's threshold.", read_only=False, value_range=(0.0, 1.0)),
    ParamSpec("max_rate", 0.0, "Most frames processed per second, by image stamps (so bag "
              "replay behaves the same); 0 = as fast as the model allows.", read_only=False,
              value_range=(0.0, 1000.0)),
    ParamSpec("once", False, "true: a command/question is used on the next processed frame "
              "only, then cleared; false: it stays active until replaced.", read_only=False),
    ParamSpec("publish_debug_image", True, "Draw the result on the frame and publish it on "
              "debug_image; it is computed only while someone subscribes.", read_only=False),
    ParamSpec("top_k_answers", 5, "Answers (with probabilities) listed in Answer.top_answers.",
              read_only=False, value_range=(1, 50)),
    ParamSpec("max_candidates", 5, "Runner-up boxes listed in Grounding.candidates.",
              read_only=False, value_range=(0, 20)),
    ParamSpec("stale_input_s", 2.0, "Diagnostics warn when no frame arrived for this long "
              "(node clock).", read_only=False, value_range=(0.0, 3600.0)),
)
PARAMS_BY_NAME = {spec.name: spec for spec in PARAMS}


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    description = spec.description
    if spec.choices:
        shown = ", ".join(repr(c) for c in spec.choices)
        description += f" One of: {shown}."
    descriptor = ParameterDescriptor(description=description, read_only=spec.read_only)
    if spec.value_range is not None:
        low, high = spec.value_range
        if isinstance(low, float):
            descriptor.floating_point_range = [FloatingPointRange(from_value=low, to_value=high)]
        else:
            descriptor.integer_range = [IntegerRange(from_value=low, to_value=high)]
    if spec.choices:
        descriptor.additional_constraints = f"one of {list(spec.choices)}"
    return descriptor


@dataclass
class LiveSettings:
    """Values the worker reads on every frame; replaced field by field when a live parameter
    is set (each assignment is atomic, no lock needed)."""

    encoding_override: str = ""
    max_pixels: int = DEFAULT_MAX_PIXELS
    score_threshold: float = 0.5
    max_rate: float = 0.0
    once: bool = False
    publish_debug_image: bool = True
    top_k_answers: int = 5
    max_candidates: int = 5
    stale_input_s: float = 2.0


# ---------------------------------------------------------------------------------------------
# Latest-frame slot and prompt state
# ---------------------------------------------------------------------------------------------

@dataclass
class Frame:
    msg: object           # sensor_msgs/Image or CompressedImage
    compressed: bool
    received: float       # time.perf_counter() at receipt (for the node's own timing)


class LatestFrameSlot:
    """Holds at most one frame. put() replaces an untaken frame (counted as dropped);
    take() hands each frame out once."""

    def __init__(self):
        self._condition = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False
        self.dropped = 0

    def put(self, frame: Frame) -> None:
        with self._condition:
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._condition.notify()

    def take(self, timeout: float) -> Frame | None:
        with self._condition:
            self._condition.wait_for(lambda: self._frame is not None or self._closed, timeout)
            frame, self._frame = self._frame, None
            return frame

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()


@dataclass
class Prompt:
    """An active command or question. ``cache`` is the encoded text (Predictor.TextCache),
    filled once by the worker and reused on every frame."""

    text: str
    prompt_id: int
    reason: str = ""      # why no result can be produced (empty text)
    cache: object = None
    truncated_chars: bool = False


def normalise_text(text: str) -> tuple[str, bool]:
    """Collapse whitespace; cut at MAX_PROMPT_CHARS. Returns (text, was_cut)."""
    text = " ".join(text.split())
    if len(text) > MAX_PROMPT_CHARS:
        return text[:MAX_PROMPT_CHARS], True
    return text, False


def looks_like_question(text: str) -> bool:
    words = text.strip().lower().split()
    return text.strip().endswith("?") or (bool(words) and words[0] in QUESTION_WORDS)


@dataclass
class Stats:
    received: int = 0
    processed: int = 0
    malformed: int = 0
    rate_skipped: int = 0
    idle: int = 0            # frames received while no command/question was active
    text_encodings: int = 0
    debug_published: int = 0
    errors: int = 0
    last_error: str = ""
    last_frame_ns: int | None = None
    inference_ms: deque = field(default_factory=lambda: deque(maxlen=100))
    # Receipt -> worker start (waiting while the previous frame is inferred), and the
    # worker's time beyond the model (conversion, messages, publishing).
    wait_ms: deque = field(default_factory=lambda: deque(maxlen=100))
    overhead_ms: deque = field(default_factory=lambda: deque(maxlen=100))
    input_age_ms: deque = field(default_factory=lambda: deque(maxlen=100))


def _stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def _roi(box_xyxy, width: int, height: int) -> RegionOfInterest:
    """Image-pixel (x0, y0, x1, y1) -> RegionOfInterest, rounded and clipped to the image."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    left = min(max(int(round(x0)), 0), width)
    top = min(max(int(round(y0)), 0), height)
    right = min(max(int(round(x1)), left), width)
    bottom = min(max(int(round(y1)), top), height)
    return RegionOfInterest(x_offset=left, y_offset=top, width=right - left,
                            height=bottom - top)


# ---------------------------------------------------------------------------------------------
# The node
# ---------------------------------------------------------------------------------------------

class EssenNode(Node):
    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        self._declare_read_only_parameters()
        self._checkpoint_path, checkpoint_config = self._resolve_checkpoint()
        # Every parameter is checked before the model loads: a typo fails in a second.
        self.live = LiveSettings()
        self._declare_live_parameters(float(checkpoint_config.found_threshold))
        self._predictor = self._load_predictor()
        self._predictor.max_candidates = self.live.max_candidates + 1  # + the best box
        self._model_lock = threading.Lock()
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

        self.stats = Stats()
        self._dropped_logged: dict[tuple, float] = {}  # cause -> last time it was logged
        self._slot = LatestFrameSlot()
        self._prompt_lock = threading.Lock()
        self._prompts: dict[str, Prompt | None] = {"command": None, "question": None}
        self._prompt_counter = {"command": 0, "question": 0}
        self._last_accepted_ns: int | None = None
        self._service_text: tuple[str, object] | None = None

        self._create_interfaces()
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._worker_loop, name="essen_inference",
                                        daemon=True)
        self._worker.start()
        # Diagnostics on a steady clock: with use_sim_time and no /clock yet they still flow.
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics,
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._log_startup()

    # -- start-up -------------------------------------------------------------------------

    def _declare_read_only_parameters(self) -> None:
        for spec in PARAMS:
            if spec.read_only:
                self._declare(spec, spec.default)
        for name in ("image_transport", "image_reliability"):
            value = self.get_parameter(name).value
            if value not in PARAMS_BY_NAME[name].choices:
                raise StartupError(f"parameter {name}={value!r} is invalid: must be one of "
                                   f"{list(PARAMS_BY_NAME[name].choices)}")
        threads = self.get_parameter("num_threads").value
        if threads > 0:
            import torch

            torch.set_num_threads(threads)

    def _declare(self, spec: ParamSpec, default) -> None:
        try:
            self.declare_parameter(spec.name, default, _descriptor(spec))
        except Exception as error:  # noqa: BLE001 - rclpy raises several types here
            raise StartupError(parameter_error(spec.name, error)) from None

    def _resolve_checkpoint(self):
        """The checkpoint folder and its model config, checked without loading torch."""
        value = self.get_parameter("checkpoint").value
        path = Path(value).expanduser() if value else default_checkpoint()
        if not path.exists():
            raise StartupError(f"checkpoint not found: {path} (set the 'checkpoint' parameter "
                               "or ESSEN_MODEL to a checkpoint folder)")
        if not (path / "config.yaml").is_file():
            raise StartupError(f"checkpoint {path} is not a checkpoint folder: "
                               "config.yaml missing")
        # The config check needs no torch: a wrong folder fails in a second, not after the
        # model libraries have loaded.
        import yaml

        from essen_ros.model.config import ConfigError, model_config_from_dict

        try:
            config = model_config_from_dict(yaml.safe_load((path / "config.yaml").read_text()))
        except (yaml.YAMLError, ConfigError, TypeError, AttributeError, ValueError) as error:
            raise StartupError(f"cannot load checkpoint {path}: bad config.yaml: "
                               f"{error}") from None
        return path, config

    def _load_predictor(self):
        from essen_ros.model.checkpoint import load_model
        from essen_ros.model.predictor import Predictor

        device = self.get_parameter("device").value
        try:
            return Predictor(load_model(self._checkpoint_path), device=device)
        except Exception as error:  # noqa: BLE001 - any failure here means "cannot start"
            raise StartupError(f"cannot load checkpoint {self._checkpoint_path} on device "
                               f"{device!r}: {type(error).__name__}: {error}") from None

    def _declare_live_parameters(self, checkpoint_threshold: float) -> None:
        for spec in PARAMS:
            if spec.read_only:
                continue
            default = spec.default
            if spec.name == "score_threshold":
                default = checkpoint_threshold
            self._declare(spec, default)
        override = self.get_parameter("encoding_override").value
        if override and not is_supported_encoding(override):
            raise StartupError(f"parameter encoding_override={override!r}: unsupported "
                               f"encoding (supported: {', '.join(SUPPORTED_ENCODINGS)})")
        for spec in PARAMS:
            if not spec.read_only:
                setattr(self.live, spec.name, self.get_parameter(spec.name).value)

    def _create_interfaces(self) -> None:
        reliability = (ReliabilityPolicy.RELIABLE
                       if self.get_parameter("image_reliability").value == "reliable"
                       else ReliabilityPolicy.BEST_EFFORT)
        self._image_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST,
                                     depth=self.get_parameter("image_qos_depth").value,
                                     reliability=reliability,
                                     durability=DurabilityPolicy.VOLATILE)
        text_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        result_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)

        def sub_events(topic):
            return SubscriptionEventCallbacks(
                incompatible_qos=lambda event: self._log_incompatible_qos(topic, event, "publisher"))

        def pub_events(topic):
            return PublisherEventCallbacks(
                incompatible_qos=lambda event: self._log_incompatible_qos(topic, event, "subscriber"))

        self._compressed = self.get_parameter("image_transport").value == "compressed"
        if self._compressed:
            self._image_sub = self.create_subscription(
                CompressedImage, "image/compressed", self._on_compressed_image,
                self._image_qos, event_callbacks=sub_events("image/compressed"))
        else:
            self._image_sub = self.create_subscription(
                Image, "image", self._on_image, self._image_qos,
                event_callbacks=sub_events("image"))
        self._command_sub = self.create_subscription(
            String, "command", lambda msg: self._on_prompt("command", msg.data), text_qos,
            event_callbacks=sub_events("command"))
        self._question_sub = self.create_subscription(
            String, "question", lambda msg: self._on_prompt("question", msg.data), text_qos,
            event_callbacks=sub_events("question"))
        self._grounding_pub = self.create_publisher(Grounding, "grounding", result_qos,
                                                    event_callbacks=pub_events("grounding"))
        self._answer_pub = self.create_publisher(Answer, "answer", result_qos,
                                                 event_callbacks=pub_events("answer"))
        self._debug_pub = self.create_publisher(Image, "debug_image", result_qos,
                                                event_callbacks=pub_events("debug_image"))
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._query_srv = self.create_service(Query, "query", self._on_query)

    def _log_incompatible_qos(self, topic: str, event, other: str) -> None:
        policy = qos_policy_name_from_kind(event.last_policy_kind)
        if topic.startswith("image"):
            ours = (f"{self.get_parameter('image_reliability').value}, set by the "
                    f"image_reliability parameter")
        else:
            ours = "reliable, volatile, depth 10"
        self.get_logger().warning(
            f"incompatible QoS on '{topic}': a {other} was found whose {policy} policy does "
            f"not match this node's ({ours}); no messages flow between them")

    def _log_startup(self) -> None:
        qos = self._image_qos
        model = self._model_summary()
        self.get_logger().info(
            f"model {model} from {self._checkpoint_path} on "
            f"{self.get_parameter('device').value}, torch threads {self._torch_threads()}; "
            f"image: {self._image_sub.topic_name} "
            f"({'CompressedImage' if self._compressed else 'Image'}, "
            f"{qos.reliability.name.lower()}, depth {qos.depth}); "
            f"command: {self._command_sub.topic_name}; question: {self._question_sub.topic_name}; "
            f"publishing {self._grounding_pub.topic_name}, {self._answer_pub.topic_name}, "
            f"{self._debug_pub.topic_name}, /diagnostics; service {self._query_srv.service_name}; "
            f"score_threshold {self.live.score_threshold:.2f}")

    def _model_summary(self) -> str:
        """e.g. "essen-default (two_tower, 320x240, 24.1 M parameters)"."""
        if not hasattr(self, "_model_summary_text"):
            config = self._predictor.config
            parameters = sum(p.numel() for p in self._predictor.model.parameters())
            self._model_summary_text = (
                f"{self._checkpoint_path.name} ({config.kind}, "
                f"{config.input_size[0]}x{config.input_size[1]}, {parameters / 1e6:.1f} M parameters)")
        return self._model_summary_text

    @staticmethod
    def _torch_threads() -> int:
        import torch

        return torch.get_num_threads()

    # -- parameters -----------------------------------------------------------------------

    def _validate_parameters(self, params) -> SetParametersResult:
        """Checks beyond type and range (rclpy checks those first from the descriptors)."""
        for param in params:
            if param.name == "encoding_override" and param.value:
                if not is_supported_encoding(param.value):
                    return SetParametersResult(
                        successful=False,
                        reason=f"encoding_override {param.value!r} is not supported "
                               f"(supported: {', '.join(SUPPORTED_ENCODINGS)}, or empty)")
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params) -> None:
        for param in params:
            if hasattr(self.live, param.name):
                setattr(self.live, param.name, param.value)
                if param.name == "max_candidates":
                    self._predictor.max_candidates = param.value + 1  # + the best box
                self.get_logger().info(f"parameter {param.name} set to {param.value!r}")

    # -- inputs (executor thread: cheap, never raises) -------------------------------------

    def _on_image(self, msg: Image) -> None:
        self._accept_frame(msg, compressed=False)

    def _on_compressed_image(self, msg: CompressedImage) -> None:
        self._accept_frame(msg, compressed=True)

    def _accept_frame(self, msg, compressed: bool) -> None:
        now_ns = self.get_clock().now().nanoseconds
        self.stats.received += 1
        self.stats.last_frame_ns = now_ns
        if self.live.max_rate > 0:
            # Rate by image stamps (bag replay at any speed gives the same frames); frames
            # without a stamp fall back to the node clock. A stamp going backwards (bag
            # loop) restarts the count.
            stamp = _stamp_ns(msg.header.stamp) or now_ns
            last = self._last_accepted_ns
            if last is not None and 0 <= stamp - last < 1e9 / self.live.max_rate:
                self.stats.rate_skipped += 1
                return
            self._last_accepted_ns = stamp
        self._slot.put(Frame(msg, compressed, time.perf_counter()))

    def _on_prompt(self, kind: str, raw_text: str) -> None:
        text, cut = normalise_text(raw_text)
        if cut:
            self.get_logger().warning(f"{kind} longer than {MAX_PROMPT_CHARS} characters: "
                                      "truncated")
        with self._prompt_lock:
            self._prompt_counter[kind] += 1
            previous = self._prompts[kind]
            prompt = Prompt(text=text, prompt_id=self._prompt_counter[kind],
                            reason="" if text else f"empty {kind}")
            if previous is not None and previous.text == text:
                prompt.cache = previous.cache  # same text: keep its encoding
            self._prompts[kind] = prompt
        shown = text if len(text) <= LOGGED_PROMPT_CHARS else text[:LOGGED_PROMPT_CHARS] + "..."
        self.get_logger().info(f"{kind} #{prompt.prompt_id}: {shown!r}"
                               + (f" ({len(text)} chars)" if shown != text else ""))

    # -- worker ---------------------------------------------------------------------------

    def _worker_loop(self) -> None:
        while not self._stopping.is_set():
            frame = self._slot.take(timeout=0.2)
            if frame is None or self._stopping.is_set():
                continue
            try:
                self._process(frame)
            except Exception as error:  # noqa: BLE001 - the worker must outlive any frame
                self.stats.errors += 1
                self.stats.last_error = f"{type(error).__name__}: {error}"
                self.get_logger().error(f"frame failed: {self.stats.last_error}",
                                        throttle_duration_sec=ERROR_THROTTLE_S)

    def _log_dropped(self, error: ImageConversionError) -> None:
        """Throttled per cause (error kind + the field it names), so a flood of one bad kind
        of frame cannot hide the first report of another."""
        cause = (type(error).__name__, " ".join(str(error).split()[:2]))
        now = time.monotonic()
        if now - self._dropped_logged.get(cause, -ERROR_THROTTLE_S) >= ERROR_THROTTLE_S:
            self._dropped_logged[cause] = now
            self.get_logger().error(f"dropped frame: {error}")

    def _debug_wanted(self) -> bool:
        return self.live.publish_debug_image and self._debug_pub.get_subscription_count() > 0

    def _process(self, frame: Frame) -> None:
        taken = time.perf_counter()
        with self._prompt_lock:
            active = {k: p for k, p in self._prompts.items() if p is not None}
        want_debug = self._debug_wanted()
        if not active and not want_debug:
            self.stats.idle += 1
            return
        try:
            rgb = self._convert(frame.msg, frame.compressed)
        except ImageConversionError as error:
            self.stats.malformed += 1
            self.stats.last_error = str(error)
            self._log_dropped(error)
            return
        if self.live.once:
            with self._prompt_lock:  # each prompt is used on exactly one frame
                for kind, prompt in active.items():
                    if self._prompts[kind] is prompt:
                        self._prompts[kind] = None

        header = frame.msg.header
        grounding = answer = None
        with self._model_lock:
            started = time.perf_counter()
            image_cache = self._predictor.encode_image(rgb) if any(
                not p.reason for p in active.values()) else None
            image_ms = (time.perf_counter() - started) * 1000.0
            if "command" in active:
                grounding = self._ground(image_cache, active["command"], rgb.shape, image_ms)
            if "question" in active:
                answer = self._answer(image_cache, active["question"], image_ms)
        for result, publisher in ((grounding, self._grounding_pub), (answer, self._answer_pub)):
            if result is not None:
                result.header = header
                publisher.publish(result)
        if grounding is not None or answer is not None:
            self.stats.processed += 1
            # Both results share one image encoding: model time = image + both heads.
            model_ms = image_ms + sum(r.inference_ms - image_ms
                                      for r in (grounding, answer) if r is not None)
            self.stats.inference_ms.append(model_ms)
            self.stats.wait_ms.append((taken - frame.received) * 1000.0)
            self.stats.overhead_ms.append((time.perf_counter() - taken) * 1000.0 - model_ms)
            stamp_ns = _stamp_ns(header.stamp)
            if stamp_ns:
                age_ms = (self.get_clock().now().nanoseconds - stamp_ns) / 1e6
                self.stats.input_age_ms.append(age_ms)
        if want_debug:
            self._publish_debug(rgb, header, grounding, answer)

    def _convert(self, msg, compressed: bool) -> np.ndarray:
        if compressed:
            return compressed_image_to_rgb(msg, self.live.max_pixels)
        return image_to_rgb(msg, self.live.encoding_override, self.live.max_pixels)

    def _text_cache(self, prompt: Prompt, kind: str):
        """Encode a prompt's text the first time it is used (model lock held)."""
        if prompt.cache is None:
            prompt.cache = self._predictor.encode_text(prompt.text)
            self.stats.text_encodings += 1
            if getattr(prompt.cache, "truncated", False):
                self.get_logger().warning(f"{kind} #{prompt.prompt_id} longer than the "
                                          "model's token limit: truncated")
        return prompt.cache

    def _ground(self, image_cache, prompt: Prompt, shape, image_ms: float) -> Grounding:
        msg = Grounding(command=prompt.text, command_id=prompt.prompt_id)
        if prompt.reason:
            msg.found, msg.reason = False, prompt.reason
            return msg
        text_cache = self._text_cache(prompt, "command")
        started = time.perf_counter()
        result = self._predictor.ground(image_cache, text_cache)
        msg.inference_ms = image_ms + (time.perf_counter() - started) * 1000.0
        self._fill_grounding(msg, result, shape)
        return msg

    def _fill_grounding(self, msg: Grounding, result, shape) -> None:
        height, width = shape[:2]
        threshold = self.live.score_threshold
        msg.score = float(result.score)
        msg.found = msg.score >= threshold
        if msg.found:
            msg.box = _roi(result.box_xyxy, width, height)
        else:
            msg.reason = (f"no match: best score {msg.score:.3f} below threshold "
                          f"{threshold:.3f}")
        # Predictor.candidates[0] is the best box itself; the message lists the runners-up.
        runners_up = list(result.candidates)[1:1 + self.live.max_candidates]
        msg.candidates = [Candidate(score=float(score), box=_roi(box, width, height))
                          for score, box in runners_up]

    def _answer(self, image_cache, prompt: Prompt, image_ms: float) -> Answer:
        msg = Answer(question=prompt.text, question_id=prompt.prompt_id)
        if prompt.reason:
            msg.reason = prompt.reason
            return msg
        text_cache = self._text_cache(prompt, "question")
        started = time.perf_counter()
        result = self._predictor.answer(image_cache, text_cache, top_k=self.live.top_k_answers)
        msg.inference_ms = image_ms + (time.perf_counter() - started) * 1000.0
        self._fill_answer(msg, result)
        return msg

    def _fill_answer(self, msg: Answer, result) -> None:
        msg.answer = str(result.answer)
        msg.score = float(result.score)
        top = list(result.top)[:self.live.top_k_answers]
        msg.top_answers = [str(a) for a, _ in top]
        msg.top_scores = [float(p) for _, p in top]

    def _publish_debug(self, rgb: np.ndarray, header, grounding, answer) -> None:
        from PIL import Image as PILImage, ImageDraw

        picture = PILImage.fromarray(rgb)
        draw = ImageDraw.Draw(picture)
        lines = []
        if grounding is not None:
            if grounding.found:
                box = grounding.box
                draw.rectangle([box.x_offset, box.y_offset, box.x_offset + box.width - 1,
                                box.y_offset + box.height - 1], outline=(0, 255, 0), width=2)
            lines.append(f"{grounding.command} -> "
                         f"{'found' if grounding.found else 'not found'} {grounding.score:.2f}")
        if answer is not None:
            lines.append(f"{answer.question} -> {answer.answer or answer.reason} "
                         f"{answer.score:.2f}")
        for row, line in enumerate(lines or ["(no command)"]):
            draw.text((4, 4 + 12 * row), line, fill=(255, 255, 0))
        self._debug_pub.publish(rgb_to_image_msg(np.asarray(picture), header))
        self.stats.debug_published += 1

    # -- service --------------------------------------------------------------------------

    def _on_query(self, request, response):
        text, cut = normalise_text(request.text)
        task = request.task.strip().lower() or ("answer" if looks_like_question(text)
                                                else "ground")
        response.grounding.command = text
        response.answer.question = text
        response.grounding.header = response.answer.header = request.image.header
        if task not in ("ground", "answer"):
            response.success, response.message = False, (
                f"unknown task {request.task!r}: use 'ground', 'answer' or ''")
            return response
        if not text:
            response.success, response.message = False, "empty text"
            response.grounding.reason = response.answer.reason = "empty text"
            return response
        try:
            rgb = image_to_rgb(request.image, max_pixels=self.live.max_pixels)
        except ImageConversionError as error:
            response.success, response.message = False, f"bad image: {error}"
            return response
        try:
            with self._model_lock:
                text_cache = self._service_text_cache(text)
                started = time.perf_counter()
                image_cache = self._predictor.encode_image(rgb)
                if task == "ground":
                    result = self._predictor.ground(image_cache, text_cache)
                    response.grounding.inference_ms = (time.perf_counter() - started) * 1000.0
                    self._fill_grounding(response.grounding, result, rgb.shape)
                else:
                    result = self._predictor.answer(image_cache, text_cache,
                                                    top_k=self.live.top_k_answers)
                    response.answer.inference_ms = (time.perf_counter() - started) * 1000.0
                    self._fill_answer(response.answer, result)
        except Exception as error:  # noqa: BLE001 - a service call must get an answer
            response.success, response.message = False, f"inference failed: {error}"
            return response
        notes = [f"text longer than {MAX_PROMPT_CHARS} characters: truncated"] if cut else []
        if getattr(text_cache, "truncated", False):
            notes.append("text longer than the model's token limit: truncated")
        response.success, response.message = True, "; ".join([task] + notes)
        return response

    def _service_text_cache(self, text: str):
        """Callers often repeat the same text: keep the last encoding."""
        if self._service_text is None or self._service_text[0] != text:
            self._service_text = (text, self._predictor.encode_text(text))
            self.stats.text_encodings += 1
        return self._service_text[1]

    # -- diagnostics ----------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        stats, now_ns = self.stats, self.get_clock().now().nanoseconds
        with self._prompt_lock:
            command, question = self._prompts["command"], self._prompts["question"]
        since_frame_s = (now_ns - stats.last_frame_ns) / 1e9 if stats.last_frame_ns else math.inf
        level, message = DiagnosticStatus.OK, "running"
        if stats.received == 0:
            level, message = DiagnosticStatus.WARN, "no image received yet"
        elif since_frame_s > self.live.stale_input_s > 0:
            level, message = DiagnosticStatus.WARN, f"no image for {since_frame_s:.1f} s"
        elif stats.malformed or stats.errors:
            message = f"running; {stats.malformed} malformed frames dropped"

        def mean(values):
            return f"{sum(values) / len(values):.2f}" if values else "nan"

        values = {
            "model": self._model_summary(),
            "checkpoint": str(self._checkpoint_path),
            "device": self.get_parameter("device").value,
            "inference_ms_mean": mean(stats.inference_ms),
            "inference_ms_max": f"{max(stats.inference_ms):.2f}" if stats.inference_ms else "nan",
            "queue_wait_ms_mean": mean(stats.wait_ms),
            "node_overhead_ms_mean": mean(stats.overhead_ms),
            "input_age_ms_mean": mean(stats.input_age_ms),
            "input_age_ms_last": f"{stats.input_age_ms[-1]:.2f}" if stats.input_age_ms else "nan",
            "seconds_since_last_frame": f"{since_frame_s:.2f}",
            "frames_received": str(stats.received),
            "frames_processed": str(stats.processed),
            "frames_dropped": str(self._slot.dropped),
            "frames_rate_skipped": str(stats.rate_skipped),
            "frames_idle": str(stats.idle),
            "frames_malformed": str(stats.malformed),
            "errors": str(stats.errors),
            "last_error": stats.last_error,
            "text_encodings": str(stats.text_encodings),
            "debug_images_published": str(stats.debug_published),
            "command": command.text if command else "",
            "command_id": str(command.prompt_id if command else 0),
            "question": question.text if question else "",
            "question_id": str(question.prompt_id if question else 0),
        }
        status = DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name()}: perception",
                                  message=message, hardware_id=values["model"],
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)

    # -- shutdown -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop and join the worker; safe to call twice."""
        self._stopping.set()
        self._slot.close()
        if self._worker.is_alive():
            self._worker.join(timeout=10.0)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    return run_node(EssenNode, NODE_NAME, argv)


if __name__ == "__main__":
    sys.exit(main())
