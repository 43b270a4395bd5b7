"""A separate OS process for DDS tests: publishes known messages so the test process can
check what crosses the process boundary. Run: python test/dds_peer.py {messages|images} ..."""
from __future__ import annotations

import sys
import time

import numpy as np
import rclpy
from rclpy.qos import QoSProfile, QoSReliabilityPolicy, QoSDurabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, RegionOfInterest

from essen_ros.msg import Answer, Candidate, Grounding


def sample_grounding() -> Grounding:
    g = Grounding()
    g.header.stamp.sec, g.header.stamp.nanosec = 1712345678, 987654321
    g.header.frame_id = "camera_optical_frame"
    g.command = "pick up the red cube left of the sphere ünïcødé"
    g.command_id = 4294967295
    g.found = True
    g.score = 0.8125
    g.box = RegionOfInterest(x_offset=12, y_offset=34, width=56, height=78, do_rectify=True)
    g.candidates = [Candidate(score=0.25, box=RegionOfInterest(x_offset=1, y_offset=2, width=3, height=4)),
                    Candidate(score=0.125, box=RegionOfInterest(x_offset=5, y_offset=6, width=7, height=8))]
    g.reason = "none"
    g.inference_ms = 17.5
    return g


def sample_answer() -> Answer:
    a = Answer()
    a.header.stamp.sec, a.header.stamp.nanosec = 42, 7
    a.header.frame_id = "head_camera"
    a.question = "how many metal things are there?"
    a.question_id = 9
    a.answer = "3"
    a.score = 0.75
    a.top_answers = ["3", "2", "4"]
    a.top_scores = [0.75, 0.125, 0.0625]
    a.reason = ""
    a.inference_ms = 9.25
    return a


def frame_pixels(index: int, width: int, height: int) -> np.ndarray:
    """Deterministic image content that differs per frame, so the receiver can check bytes."""
    rng = np.random.default_rng(index)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def wait_for_subscriber(node, pub, timeout=20.0):
    end = time.monotonic() + timeout
    while pub.get_subscription_count() == 0 and time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    if pub.get_subscription_count() == 0:
        sys.exit("no subscriber matched")
    time.sleep(0.5)  # let the subscriber's side of discovery settle too


def publish_messages(node):
    qos = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                     durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
    gp = node.create_publisher(Grounding, "test_grounding", qos)
    ap = node.create_publisher(Answer, "test_answer", qos)
    wait_for_subscriber(node, gp)
    gp.publish(sample_grounding())
    ap.publish(sample_answer())
    end = time.monotonic() + 15
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.1)


def publish_images(node, count: int, rate: float, width: int, height: int):
    pub = node.create_publisher(Image, "test_image", qos_profile_sensor_data)
    wait_for_subscriber(node, pub)
    period = 1.0 / rate
    start = time.monotonic()
    for i in range(count):
        msg = Image()
        msg.header.frame_id = f"frame_{i}"
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.height, msg.width, msg.encoding, msg.is_bigendian = height, width, "rgb8", 0
        msg.step = width * 3
        msg.data = frame_pixels(i, width, height).tobytes()
        pub.publish(msg)
        delay = start + (i + 1) * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    time.sleep(2.0)


def main():
    rclpy.init()
    node = rclpy.create_node("essen_dds_peer")
    try:
        if sys.argv[1] == "messages":
            publish_messages(node)
        else:
            count, rate, width, height = int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
            publish_images(node, count, rate, width, height)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
