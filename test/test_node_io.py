"""The perception node as a separate process over real DDS: image inputs (every encoding,
padded rows, compressed, malformed), results equal to the offline model, headers copied,
latest-frame-only processing, debug image, QoS warnings. Two nodes (raw and compressed
input) are shared by the whole module; a tiny random checkpoint keeps inference fast."""
from __future__ import annotations

import itertools
import json
import signal
import threading
import time

import numpy as np
import pytest
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from essen_ros.msg import Answer, Grounding
from essen_ros.ros.image_conversion import (SUPPORTED_ENCODINGS, compressed_to_rgb,
                                            image_to_rgb)
from node_harness import (NodeProcess, RosClient, assert_same_grounding,
                          collect_diagnostics, compress, latest_diagnostics, make_image_msg,
                          node_env, sample_image, stamp_ns)
from node_harness import checkpoint, reference  # noqa: F401 - fixtures

pytestmark = pytest.mark.ros

COMMAND = "the small red cube left of the sphere"
THRESHOLD = 0.5  # the tiny checkpoint's found_threshold (default config)
_stamps = itertools.count(1_700_000_000_000_000_000, 10_000_000)


@pytest.fixture(scope="module")
def nodes(ros_env, checkpoint):
    env = node_env(ros_env)
    raw = NodeProcess(env, "-r", "__ns:=/io", "-p", f"checkpoint:={checkpoint}",
                      "-p", "image_reliability:=reliable")
    compressed = NodeProcess(env, "-r", "__ns:=/io_cmp", "-p", f"checkpoint:={checkpoint}",
                             "-p", "image_transport:=compressed")
    try:
        raw.wait_started()
        compressed.wait_started()
        yield {"raw": raw, "compressed": compressed}
    finally:
        for node in (raw, compressed):
            node.stop()


@pytest.fixture(scope="module")
def io(nodes):
    """Client side: publishers, collectors, the active command on both nodes."""
    client = RosClient("node_io_test")
    io = {
        "client": client,
        "image": client.publisher(Image, "/io/image"),
        "compressed": client.publisher(CompressedImage, "/io_cmp/image/compressed"),
        "grounding": client.collect(Grounding, "/io/grounding"),
        "grounding_cmp": client.collect(Grounding, "/io_cmp/grounding"),
        "answer": client.collect(Answer, "/io/answer"),
        "diagnostics": collect_diagnostics(client),
    }
    for namespace in ("/io", "/io_cmp"):
        publisher = client.publisher(String, f"{namespace}/command")
        client.wait_matched(publisher)
        publisher.publish(String(data=COMMAND))
        io[f"command{namespace}"] = publisher
    client.wait_matched(io["image"])
    client.wait_matched(io["compressed"])
    yield io
    client.close()


def _send(io, msg, topic="image", results="grounding", timeout=20.0):
    """Publish one frame with a fresh stamp; return the result carrying that stamp."""
    stamp = next(_stamps)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
    io[topic].publish(msg)
    return io[results].wait_for(lambda m: stamp_ns(m.header) == stamp, timeout)


def test_startup_logs_resolved_topics_qos_and_model_once(nodes, checkpoint):
    raw, compressed = nodes["raw"].output, nodes["compressed"].output
    assert "image: /io/image (Image, reliable, depth 1)" in raw
    assert "command: /io/command; question: /io/question" in raw
    assert f"model {checkpoint.name} (two_tower, 96x64" in raw
    assert f"from {checkpoint} on cpu" in raw
    assert raw.count("]: model ") == 1
    assert "image: /io_cmp/image/compressed (CompressedImage, best_effort, depth 1)" in compressed


ENCODING_CASES = [(name, 0, False) for name in SUPPORTED_ENCODINGS] + [
    ("mono16", 0, True), ("16UC1", 0, True),      # big-endian 16-bit
    ("rgb8", 13, False), ("bgra8", 3, False),    # padded rows
    ("yuv422_yuy2", 8, False), ("bayer_grbg8", 5, False), ("mono16", 6, True),
]


@pytest.mark.parametrize("encoding, padding, bigendian", ENCODING_CASES,
                         ids=[f"{e}-pad{p}{'-be' if b else ''}" for e, p, b in ENCODING_CASES])
def test_every_encoding_gives_the_offline_result_with_the_image_header(
        io, reference, encoding, padding, bigendian):
    rgb = sample_image(160, 120, seed=3)
    msg = make_image_msg(rgb, encoding, padding=padding, bigendian=bigendian,
                         frame_id=f"cam_{encoding}_{padding}")
    result = _send(io, msg)
    assert result.header.frame_id == msg.header.frame_id
    assert stamp_ns(result.header) == stamp_ns(msg.header)
    assert result.command == COMMAND and result.command_id == 1
    # Offline: the same message converted in this process, then the same Predictor calls.
    assert_same_grounding(result, reference.ground(image_to_rgb(msg), COMMAND), 160, 120,
                          THRESHOLD)
    assert result.inference_ms > 0


def test_lossless_encodings_give_exactly_the_rgb_result(io, reference):
    """bgr8 with padding must give what the RGB original gives offline: no channel swap,
    no shear anywhere between camera message and model."""
    rgb = sample_image(160, 120, seed=4)
    expected = reference.ground(rgb, COMMAND)
    for encoding, padding in (("rgb8", 0), ("bgr8", 11), ("bgra8", 0)):
        result = _send(io, make_image_msg(rgb, encoding, padding=padding))
        assert_same_grounding(result, expected, 160, 120, THRESHOLD)


def test_clevr_frame_grounding_and_answer_equal_offline(io, reference, clevr_dev):
    item = json.loads((clevr_dev / "annotations.jsonl").read_text().splitlines()[0])
    with PILImage.open(clevr_dev / item["image"]) as picture:
        rgb = np.asarray(picture.convert("RGB"))
    height, width = rgb.shape[:2]
    question = "how many red cubes are there?"
    publisher = io["client"].publisher(String, "/io/question")
    io["client"].wait_matched(publisher)
    publisher.publish(String(data=question))
    time.sleep(0.5)  # the question must be active before the frame arrives
    msg = make_image_msg(rgb, "bgr8", frame_id="clevr_camera")
    grounding = _send(io, msg)
    assert_same_grounding(grounding, reference.ground(rgb, COMMAND), width, height, THRESHOLD)
    answer = io["answer"].wait_for(lambda m: stamp_ns(m.header) == stamp_ns(msg.header))
    expected = reference.answer(rgb, question)
    assert answer.header.frame_id == "clevr_camera"
    assert answer.question == question and answer.question_id == 1
    assert answer.answer == expected.answer
    assert answer.score == pytest.approx(expected.score, abs=1e-4)
    assert list(answer.top_answers) == [a for a, _ in expected.top]
    np.testing.assert_allclose(answer.top_scores, [p for _, p in expected.top], atol=1e-4)


@pytest.mark.parametrize("codec, format_string", [
    ("JPEG", "rgb8; jpeg compressed bgr8"), ("PNG", "png"), ("JPEG", "jpeg")])
def test_compressed_input_gives_the_offline_result(io, reference, codec, format_string):
    rgb = sample_image(160, 120, seed=5)
    msg = CompressedImage(format=format_string, data=compress(rgb, codec))
    msg.header.frame_id = f"compressed_{codec}"
    result = _send(io, msg, topic="compressed", results="grounding_cmp")
    assert result.header.frame_id == f"compressed_{codec}"
    decoded = compressed_to_rgb(bytes(msg.data), format_string)
    assert_same_grounding(result, reference.ground(decoded, COMMAND), 160, 120, THRESHOLD)


def _raw_diagnostics(io, fresh=False) -> dict:
    """The /io node's latest diagnostics values (fresh: published after this call)."""
    return latest_diagnostics(io["diagnostics"], after=time.monotonic() if fresh else 0.0,
                              name_part="/io/essen_node:")


def test_malformed_frames_are_dropped_counted_and_the_node_stays_up(io, nodes):
    before = _raw_diagnostics(io)
    bad = []
    short = make_image_msg(sample_image(32, 16), "rgb8")
    short.data = bytes(short.data)[:100]
    bad.append(short)
    bad.append(Image(width=0, height=16, step=0, encoding="rgb8", data=b""))
    zero_step = make_image_msg(sample_image(32, 16), "rgb8")
    zero_step.step = 0
    bad.append(zero_step)
    bad.append(Image(width=4, height=4, step=16, encoding="32FC1", data=bytes(64)))
    bad.append(Image(width=5000, height=5000, step=15000, encoding="rgb8", data=bytes(30)))
    for msg in bad:
        msg.header.frame_id = "bad"
        io["image"].publish(msg)
        time.sleep(0.5)  # one at a time: a newer frame would replace an untaken one
    good = _send(io, make_image_msg(sample_image(32, 16), "rgb8", frame_id="after_bad"))
    assert good.header.frame_id == "after_bad"
    assert nodes["raw"].alive()
    after = _raw_diagnostics(io, fresh=True)
    assert int(after["frames_malformed"]) - int(before["frames_malformed"]) == len(bad)
    assert "dropped frame:" in nodes["raw"].output
    # each kind of bad frame is reported, not hidden behind the throttle of another kind
    assert "unsupported encoding '32FC1'" in nodes["raw"].output
    assert "image 5000x5000" in nodes["raw"].output
    assert "Traceback" not in nodes["raw"].output
    assert io["grounding"].matching(lambda m: m.header.frame_id == "bad") == []

    # Garbage on the compressed input: counted there, that node keeps working too.
    garbage = CompressedImage(format="jpeg", data=b"\xff\xd8\xffnot really a jpeg")
    io["compressed"].publish(garbage)
    time.sleep(0.5)
    ok = _send(io, CompressedImage(format="png", data=compress(sample_image(32, 16), "PNG")),
               topic="compressed", results="grounding_cmp")
    assert ok is not None and nodes["compressed"].alive()
    assert "cannot decode jpeg data" in nodes["compressed"].output


def test_latest_frame_only_each_frame_at_most_once(io):
    before = _raw_diagnostics(io, fresh=True)
    rgb = sample_image(320, 240, seed=6)
    stamps = []
    for index in range(40):  # a burst far faster than inference
        msg = make_image_msg(rgb, "rgb8", frame_id="burst")
        stamp = next(_stamps)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        stamps.append(stamp)
        io["image"].publish(msg)
    last = io["grounding"].wait_for(lambda m: stamp_ns(m.header) == stamps[-1], 20)
    assert last.header.frame_id == "burst"  # the newest frame is never the one dropped
    time.sleep(1.5)
    results = [stamp_ns(m.header) for m in io["grounding"].matching(
        lambda m: m.header.frame_id == "burst")]
    assert len(results) == len(set(results)), "a frame was processed twice"
    assert results == sorted(results), "frames processed out of order"
    after = _raw_diagnostics(io, fresh=True)
    dropped = int(after["frames_dropped"]) - int(before["frames_dropped"])
    received = int(after["frames_received"]) - int(before["frames_received"])
    # With history depth 1 the DDS reader itself keeps only the newest sample, so some
    # frames never reach the callback; each one that does is processed once or dropped.
    assert 1 <= received <= 40
    assert len(results) + dropped == received


def test_debug_image_is_computed_only_while_subscribed(io, nodes):
    rgb = sample_image(160, 120, seed=7)
    _send(io, make_image_msg(rgb, "rgb8"))
    assert _raw_diagnostics(io, fresh=True)["debug_images_published"] == "0"

    debug = io["client"].collect(Image, "/io/debug_image")
    subscription = debug.subscription
    deadline = time.monotonic() + 20
    while subscription.get_publisher_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    msg = make_image_msg(rgb, "rgb8", frame_id="debug_frame")
    _send(io, msg)
    picture = debug.wait_for(lambda m: m.header.frame_id == "debug_frame")
    assert stamp_ns(picture.header) == stamp_ns(msg.header)
    assert (picture.width, picture.height, picture.encoding) == (160, 120, "rgb8")
    drawn = image_to_rgb(picture)
    assert (drawn != rgb).any(), "nothing drawn on the debug image"
    io["client"].node.destroy_subscription(subscription)


def test_incompatible_qos_is_logged(io, nodes):
    # The raw node subscribes reliably; a best-effort camera can never reach it.
    publisher = io["client"].publisher(Image, "/io/image", reliable=False)
    try:
        nodes["raw"].wait_for_output(r"incompatible QoS on 'image'.*RELIABILITY", 15)
    finally:
        io["client"].node.destroy_publisher(publisher)


def test_sigint_and_sigterm_shut_down_cleanly_mid_stream(io, nodes):
    """Last test of the module: stops both nodes while frames stream in and the worker is
    busy, then signals again. Exit code 0, worker joined, no traceback, within seconds."""
    stop = threading.Event()
    raw_frame = make_image_msg(sample_image(320, 240), "rgb8", frame_id="final")
    compressed_frame = CompressedImage(format="png", data=compress(sample_image(320, 240), "PNG"))
    compressed_frame.header.frame_id = "final"

    def stream():
        while not stop.is_set():
            io["image"].publish(raw_frame)
            io["compressed"].publish(compressed_frame)
            time.sleep(1 / 30)

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    try:
        for results in ("grounding", "grounding_cmp"):
            io[results].wait_count(lambda m: m.header.frame_id == "final", 3)  # busy now
        signals = {"raw": signal.SIGINT, "compressed": signal.SIGTERM}
        started = time.monotonic()
        for name, signum in signals.items():
            nodes[name].process.send_signal(signum)
        time.sleep(0.3)
        for name, signum in signals.items():  # impatient user: a second Ctrl-C / SIGTERM
            if nodes[name].alive():
                nodes[name].process.send_signal(signum)
        for name, signum in signals.items():
            code, output = nodes[name].stop(signum, timeout=20)
            assert code == 0, f"{signum.name}: exit {code}\n{output}"
            assert "shutting down" in output
            assert "Traceback" not in output, output
        assert time.monotonic() - started < 15
    finally:
        stop.set()
        streamer.join()
