"""Helpers for the perception-node tests: frames in every encoding, the node as a separate
process, and an rclpy client in the test process (its own context, spun in a thread)."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
NODE_SCRIPT = Path(sys.executable).with_name("essen-node")


# ---------------------------------------------------------------------------------------------
# Frames in every encoding (the inverse of essen_ros.ros.image_conversion, written
# independently so the tests do not check the module against itself)
# ---------------------------------------------------------------------------------------------

def sample_image(width: int = 96, height: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus a few solid blocks: demosaicing and chroma subsampling
    stay close to the original, and any channel swap or shear shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1),
                    128 + 100 * np.sin(x / 9.0 + y / 13.0)], axis=2)
    for _ in range(3):
        x0, y0 = rng.integers(0, max(width - 16, 1)), rng.integers(0, max(height - 16, 1))
        rgb[y0:y0 + 14, x0:x0 + 14] = rng.integers(0, 256, 3)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)




def _gray(rgb):
    return np.rint(rgb.astype(np.float64) @ [0.299, 0.587, 0.114]).astype(np.uint8)


def _yuv422(rgb, order):
    rgb = rgb.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    u = (u[:, 0::2] + u[:, 1::2]) / 2
    v = (v[:, 0::2] + v[:, 1::2]) / 2
    y0, y1 = y[:, 0::2], y[:, 1::2]
    parts = (u, y0, v, y1) if order == "uyvy" else (y0, u, y1, v)
    packed = np.stack(parts, axis=2).reshape(rgb.shape[0], -1)
    return np.clip(np.rint(packed), 0, 255).astype(np.uint8)


def _bayer(rgb, tile):
    out = np.empty(rgb.shape[:2], np.uint8)
    for index, colour in enumerate(tile):
        out[index // 2::2, index % 2::2] = rgb[index // 2::2, index % 2::2, "RGB".index(colour)]
    return out


def encode_pixels(rgb: np.ndarray, encoding: str, bigendian: bool = False) -> np.ndarray:
    """RGB -> the (H, W * bytes_per_pixel) uint8 rows of `encoding`."""
    height, width = rgb.shape[:2]
    name = encoding.lower()
    if name in ("rgb8",):
        rows = rgb
    elif name in ("bgr8", "8uc3"):
        rows = rgb[:, :, ::-1]
    elif name == "rgba8":
        rows = np.dstack([rgb, np.full((height, width), 7, np.uint8)])
    elif name in ("bgra8", "8uc4"):
        rows = np.dstack([rgb[:, :, ::-1], np.full((height, width), 7, np.uint8)])
    elif name in ("mono8", "8uc1"):
        rows = _gray(rgb)
    elif name in ("mono16", "16uc1"):
        # 12-bit sensor in a 16-bit container: values up to 4095.
        values = (_gray(rgb).astype(np.uint16) * 16)
        rows = values.astype(">u2" if bigendian else "<u2").view(np.uint8)
    elif name in ("yuv422", "uyvy"):
        rows = _yuv422(rgb, "uyvy")
    elif name in ("yuv422_yuy2", "yuyv", "yuy2"):
        rows = _yuv422(rgb, "yuyv")
    elif name.startswith("bayer_"):
        rows = _bayer(rgb, name[len("bayer_"):-1].upper())
    else:
        raise ValueError(encoding)
    return np.ascontiguousarray(rows).reshape(height, -1)


def expected_rgb(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """What a correct conversion of `encode_pixels(rgb, encoding)` gives back, up to the
    encoding's own loss (grey for mono, chroma subsampling for 4:2:2, demosaicing)."""
    name = encoding.lower()
    if name in ("mono8", "8uc1", "mono16", "16uc1"):
        gray = _gray(rgb)
        if name in ("mono16", "16uc1"):  # scaled by the frame's maximum
            values = gray.astype(np.uint32) * 16
            gray = ((values * 255 + values.max() // 2) // values.max()).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return rgb


def make_image_msg(rgb: np.ndarray, encoding: str, padding: int = 0, bigendian: bool = False,
                   frame_id: str = "camera", stamp_ns: int = 0):
    from sensor_msgs.msg import Image

    rows = encode_pixels(rgb, encoding, bigendian)
    if padding:
        rows = np.hstack([rows, np.full((rows.shape[0], padding), 0xAB, np.uint8)])
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding=encoding,
                is_bigendian=int(bigendian), step=rows.shape[1], data=rows.tobytes())
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    return msg


def compress(rgb: np.ndarray, codec: str, **save_args) -> bytes:
    import io

    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.fromarray(rgb).save(buffer, format=codec, **save_args)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Checkpoint and offline reference
# ---------------------------------------------------------------------------------------------

# Module-scoped fixtures for the node test modules (import them by name to use them).
@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint  # conftest's one random tiny checkpoint per run


@pytest.fixture(scope="module")
def reference(checkpoint):
    return OfflineReference(checkpoint)


class OfflineReference:
    """The model as evaluation runs it, for comparing with the node's output."""

    def __init__(self, checkpoint: Path):
        import torch

        from essen_ros.model.checkpoint import load_model
        from essen_ros.model.predictor import Predictor

        torch.set_num_threads(1)
        self.predictor = Predictor(load_model(checkpoint))
        self._texts = {}

    def _text(self, text):
        if text not in self._texts:
            self._texts[text] = self.predictor.encode_text(text)
        return self._texts[text]

    def ground(self, rgb, text):
        return self.predictor.ground(self.predictor.encode_image(rgb), self._text(text))

    def answer(self, rgb, text, top_k=5):
        return self.predictor.answer(self.predictor.encode_image(rgb), self._text(text), top_k)


def roi_from_xyxy(box, width, height):
    """The node's rounding and clipping, restated."""
    x0, y0, x1, y1 = box
    left = min(max(int(round(x0)), 0), width)
    top = min(max(int(round(y0)), 0), height)
    right = min(max(int(round(x1)), left), width)
    bottom = min(max(int(round(y1)), top), height)
    return (left, top, right - left, bottom - top)


def roi_tuple(roi):
    return (roi.x_offset, roi.y_offset, roi.width, roi.height)


def assert_same_grounding(msg, reference, width, height, threshold):
    """Node result == offline result: score within float tolerance, same box (a rounding
    step of one pixel allowed where the float box sits on a .5 boundary)."""
    assert msg.score == pytest.approx(reference.score, abs=1e-4)
    assert msg.found == (reference.score >= threshold)
    if msg.found:
        expected = roi_from_xyxy(reference.box_xyxy, width, height)
        assert np.abs(np.subtract(roi_tuple(msg.box), expected)).max() <= 1, (
            roi_tuple(msg.box), expected)


# ---------------------------------------------------------------------------------------------
# The node as a separate process
# ---------------------------------------------------------------------------------------------

class NodeProcess:
    """essen-node started through its console script; output collected by a thread."""

    def __init__(self, env: dict, *ros_args: str, args: tuple = ()):
        command = [str(NODE_SCRIPT), *args, "--ros-args", *ros_args]
        self.process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            with self._lock:
                self._lines.append(line)

    @property
    def output(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def wait_for_output(self, pattern: str, timeout: float = 60.0) -> re.Match:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            match = re.search(pattern, self.output)
            if match:
                return match
            if self.process.poll() is not None:
                self._reader.join(timeout=2)
                match = re.search(pattern, self.output)
                if match:
                    return match
                raise AssertionError(f"node exited ({self.process.returncode}) before "
                                     f"{pattern!r}:\n{self.output}")
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.output}")

    def wait_started(self, timeout: float = 90.0):
        return self.wait_for_output(r"\]: model .* from ", timeout)

    def stop(self, signum=signal.SIGINT, timeout: float = 15.0) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            code = None
        self._reader.join(timeout=5)
        return code, self.output

    def alive(self) -> bool:
        return self.process.poll() is None


def node_env(ros_env: dict, **extra) -> dict:
    env = dict(ros_env)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------
# rclpy client in the test process
# ---------------------------------------------------------------------------------------------

class Collector:
    """Every message received on one topic, in order."""

    def __init__(self):
        self.messages = []
        self._condition = threading.Condition()

    def __call__(self, msg):
        with self._condition:
            self.messages.append(msg)
            self._condition.notify_all()

    def wait_for(self, predicate, timeout: float = 20.0):
        """The first message (in arrival order) satisfying `predicate`, or AssertionError."""
        end = time.monotonic() + timeout
        with self._condition:
            while True:
                for msg in self.messages:
                    if predicate(msg):
                        return msg
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching message within {timeout} s "
                                         f"({len(self.messages)} received)")
                self._condition.wait(left)

    def wait_count(self, predicate, count: int, timeout: float = 20.0) -> list:
        end = time.monotonic() + timeout
        with self._condition:
            while True:
                found = [m for m in self.messages if predicate(m)]
                if len(found) >= count:
                    return found
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(found)} of {count} messages within {timeout} s")
                self._condition.wait(left)

    def matching(self, predicate) -> list:
        with self._condition:
            return [m for m in self.messages if predicate(m)]


class RosClient:
    """A node in its own rclpy context, spun by a background thread."""

    def __init__(self, name: str):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        from rclpy.executors import ExternalShutdownException

        try:
            while self.context.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except (ExternalShutdownException, Exception):  # noqa: BLE001 - shutting down
            pass

    def close(self):
        import rclpy

        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5)
        self.node.destroy_node()

    def publisher(self, msg_type, topic, reliable=True, depth=10):
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE if reliable
                         else ReliabilityPolicy.BEST_EFFORT)
        return self.node.create_publisher(msg_type, topic, qos)

    def collect(self, msg_type, topic, depth=100) -> Collector:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        collector = Collector()
        collector.subscription = self.node.create_subscription(
            msg_type, topic, collector,
            QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE))
        return collector

    def call(self, srv_type, name, request, timeout=20.0):
        client = self.node.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
        future = client.call_async(request)
        end = time.monotonic() + timeout
        while not future.done() and time.monotonic() < end:
            time.sleep(0.01)
        assert future.done(), f"service {name} did not answer within {timeout} s"
        return future.result()

    def set_parameters(self, node_name: str, **values):
        """SetParameters through the node's parameter service; one result per value."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request(
            parameters=[Parameter(name, value=value).to_parameter_msg()
                        for name, value in values.items()])
        return self.call(SetParameters, f"{node_name}/set_parameters", request).results

    def wait_matched(self, publisher, timeout=30.0):
        end = time.monotonic() + timeout
        while publisher.get_subscription_count() == 0 and time.monotonic() < end:
            time.sleep(0.05)
        assert publisher.get_subscription_count() > 0, f"nobody subscribes {publisher.topic_name}"
        time.sleep(0.3)  # discovery completes on both sides


def diagnostics_values(msg, name_part="essen_node") -> dict | None:
    for status in msg.status:
        if name_part in status.name:
            return {kv.key: kv.value for kv in status.values}
    return None


def latest_diagnostics(collector: Collector, after: float, timeout: float = 5.0,
                       name_part: str = "essen_node") -> dict:
    """Values from a diagnostics message received after monotonic time `after`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with collector._condition:
            recent = [(t, m) for t, m in getattr(collector, "timed", []) if t > after]
        for _t, msg in reversed(recent):
            values = diagnostics_values(msg, name_part)
            if values is not None:
                return values
        time.sleep(0.05)
    raise AssertionError(f"no diagnostics from {name_part} within {timeout} s")


class TimedCollector(Collector):
    """Collector that also remembers when each message arrived (monotonic)."""

    def __init__(self):
        super().__init__()
        self.timed = []

    def __call__(self, msg):
        with self._condition:
            self.timed.append((time.monotonic(), msg))
        super().__call__(msg)


def collect_diagnostics(client: RosClient) -> TimedCollector:
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile

    collector = TimedCollector()
    client.node.create_subscription(DiagnosticArray, "/diagnostics", collector,
                                    QoSProfile(depth=50))
    return collector


def stamp_ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
