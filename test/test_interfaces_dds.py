"""The package's messages and the shipped Fast DDS profile, between real OS processes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ros_helpers import spin_until
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image

from essen_ros.msg import Answer, Grounding

import dds_peer

PEER = str(Path(__file__).with_name("dds_peer.py"))
pytestmark = pytest.mark.ros


def fields(msg) -> dict:
    """Every field of a message, recursively, as plain Python values."""
    out = {}
    for name in msg.get_fields_and_field_types():
        value = getattr(msg, name)
        if hasattr(value, "get_fields_and_field_types"):
            out[name] = fields(value)
        elif isinstance(value, (list, tuple)) or type(value).__name__ == "array":
            out[name] = [fields(v) if hasattr(v, "get_fields_and_field_types") else v for v in value]
        else:
            out[name] = value
    return out


def test_grounding_and_answer_round_trip_every_field_between_processes(node, spawn):
    got = {}
    qos = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                     durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(Grounding, "test_grounding", lambda m: got.setdefault("g", m), qos)
    node.create_subscription(Answer, "test_answer", lambda m: got.setdefault("a", m), qos)
    peer = spawn([PEER, "messages"])
    assert spin_until(node, lambda: len(got) == 2, 30), f"peer output: {peer.stdout.read() if peer.poll() is not None else ''}"
    expected_g, expected_a = fields(dds_peer.sample_grounding()), fields(dds_peer.sample_answer())
    assert fields(got["g"]) == expected_g
    assert fields(got["a"]) == expected_a
    # spot-check that the comparison is not vacuous
    assert expected_g["candidates"][1]["box"]["width"] == 7 and expected_a["top_answers"] == ["3", "2", "4"]


def test_640x480_rgb8_stream_at_30hz_best_effort_crosses_processes_without_loss(node, spawn):
    count, width, height = 90, 640, 480
    received: dict[str, Image] = {}
    node.create_subscription(Image, "test_image", lambda m: received.__setitem__(m.header.frame_id, m),
                             qos_profile_sensor_data)
    peer = spawn([PEER, "images", str(count), "30", str(width), str(height)])
    spin_until(node, lambda: len(received) == count or peer.poll() is not None, 60)
    spin_until(node, lambda: len(received) == count, 3)
    assert len(received) == count, f"received {len(received)} of {count} frames"
    for i in (0, count // 2, count - 1):
        msg = received[f"frame_{i}"]
        pixels = np.frombuffer(bytes(msg.data), np.uint8).reshape(height, width, 3)
        assert np.array_equal(pixels, dds_peer.frame_pixels(i, width, height))
