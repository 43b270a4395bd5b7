"""essen-sim and essen-scorer as processes on their own: what the camera publishes, simulated
time, the new-scene service, and clear failures."""
from __future__ import annotations


import numpy as np
import pytest
from ros_helpers import spin_until
from geometry_msgs.msg import PoseStamped
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import Trigger

from essen_ros.msg import SceneTruth

pytestmark = pytest.mark.ros


def stamp_ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def test_sim_time_frames_truth_and_new_scene_service(node, spawn):
    got = {"image": {}, "info": {}, "truth": {}, "pose": {}, "clock": []}
    reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    for msg_type, topic, key in ((Image, "camera/image_raw", "image"), (CameraInfo, "camera/camera_info", "info"),
                                 (SceneTruth, "scene_truth", "truth"), (PoseStamped, "camera/pose", "pose")):
        node.create_subscription(msg_type, topic,
                                 lambda m, key=key: got[key].__setitem__(stamp_ns(m.header), m), reliable)
    node.create_subscription(Clock, "/clock", lambda m: got["clock"].append(
        m.clock.sec * 1_000_000_000 + m.clock.nanosec), 10)
    sim = spawn(["-m", "essen_ros.ros.sim", "--ros-args", "-p", "rate:=8.0", "-p", "publish_clock:=true",
                 "-p", "width:=128", "-p", "height:=96", "-p", "scene_period:=0.0", "-p", "seed:=2"])
    assert spin_until(node, lambda: len(got["truth"]) >= 6, 60), sim.stdout.read() if sim.poll() is not None else ""

    # Simulated time: frame n is stamped n / rate, and /clock announced it.
    stamps = sorted(got["image"])
    assert all(s % 125_000_000 == 0 for s in stamps)
    # /clock is published just before each frame but travels on its own topic: let it arrive.
    assert spin_until(node, lambda: got["clock"] and max(got["clock"]) >= stamps[-1], 10)
    assert set(stamps) <= set(got["clock"])
    # Every frame has its calibration, ground truth and camera pose under the same stamp.
    common = [s for s in stamps if s in got["info"] and s in got["truth"] and s in got["pose"]]
    assert len(common) >= 4
    image, info, truth = got["image"][common[0]], got["info"][common[0]], got["truth"][common[0]]
    assert (image.width, image.height, image.encoding, image.step) == (128, 96, "rgb8", 384)
    assert (info.width, info.height) == (128, 96) and info.k[2] == 64.0 and info.k[5] == 48.0
    assert image.header.frame_id == info.header.frame_id == truth.header.frame_id == "camera_optical_frame"
    assert got["pose"][common[0]].header.frame_id == "world"
    # The truth's boxes are where the objects are in that image: inside each box the pixels
    # differ from the plain floor colour seen at the image border.
    pixels = np.frombuffer(bytes(image.data), np.uint8).reshape(96, 128, 3).astype(int)
    in_view = [o for o in truth.objects if o.visible]
    assert in_view and len(truth.objects) >= 3
    for obj in in_view:
        b = obj.box
        patch = pixels[b.y_offset:b.y_offset + b.height, b.x_offset:b.x_offset + b.width]
        assert b.width > 0 and b.height > 0 and patch.std() > 3
    # The camera moves slowly between frames: poses differ, a little.
    positions = [np.array([p.pose.position.x, p.pose.position.y, p.pose.position.z])
                 for p in (got["pose"][common[0]], got["pose"][common[-1]])]
    assert 0 < np.linalg.norm(positions[1] - positions[0]) < 0.2

    scene_before = got["truth"][max(got["truth"])].scene_id
    client = node.create_client(Trigger, "new_scene")
    assert client.wait_for_service(timeout_sec=20)
    future = client.call_async(Trigger.Request())
    assert spin_until(node, future.done, 20) and future.result().success
    assert spin_until(node, lambda: got["truth"][max(got["truth"])].scene_id == scene_before + 1, 20)


def test_sim_refuses_impossible_settings_with_a_clear_error(spawn):
    sim = spawn(["-m", "essen_ros.ros.sim", "--ros-args", "-p", "min_objects:=6", "-p", "max_objects:=4"])
    out, _ = sim.communicate(timeout=60)
    assert sim.returncode == 2 and "min_objects 6 > max_objects 4" in out
    sim = spawn(["-m", "essen_ros.ros.sim", "--ros-args", "-p", "rate:=0.0"])
    out, _ = sim.communicate(timeout=60)
    assert sim.returncode == 2 and "parameter rate" in out


def test_scorer_without_a_node_says_what_to_check_and_still_writes_a_report(spawn, tmp_path):
    sim = spawn(["-m", "essen_ros.ros.sim", "--ros-args", "-p", "rate:=4.0", "-p", "width:=96", "-p", "height:=64"])
    scorer = spawn(["-m", "essen_ros.ros.scorer", "--ros-args", "-p", "startup_timeout:=4.0",
                    "-p", f"report_dir:={tmp_path / 'rep'}"])
    out, _ = scorer.communicate(timeout=90)
    assert scorer.returncode == 1, out
    assert "no result on /grounding or /answer after 4 s" in out and "-r image:=camera/image_raw" in out
    assert "waiting for the node's first result" in out
    assert (tmp_path / "rep" / "results.json").is_file()
    assert sim.poll() is None
