"""Simulated camera (``essen-sim``): a live tabletop scene for trying the perception node
without a robot.

Every 1/rate seconds the simulator renders the current scene (the scene generator's MuJoCo
renderer) from a camera that slowly swings around the table, as a camera on a moving robot
would, and publishes, all with the same header stamp:

* ``camera/image_raw`` (sensor_msgs/Image, rgb8) and ``camera/camera_info`` (pinhole K from
  the render's field of view, no distortion);
* ``scene_truth`` (essen_ros/SceneTruth): every object's attributes, its pixel box in this
  very image, whether it is visible enough to be talked about, and its position in the world
  frame, metres;
* ``camera/pose`` (geometry_msgs/PoseStamped, world frame, ROS optical-frame orientation:
  z forward, x right, y down): which way the camera looks, needed for "left of"/"behind",
  which CLEVR defines relative to the camera.

A new scene is drawn every ``scene_period`` seconds and whenever the ``new_scene`` service
(std_srvs/Trigger) is called. Frames, scenes and the camera path depend only on ``seed`` and
the frame count, not on wall time, so a run can be reproduced.

Stamps come from the node clock. With ``publish_clock`` the simulator is the clock instead:
frame n is stamped n / rate seconds and ``/clock`` is published before each frame, so nodes
started with ``use_sim_time`` follow the simulation.

Rendering runs on its own thread (the OpenGL context belongs to the thread that made it);
the executor thread only serves the service, so a slow render never blocks it.
"""
from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Time as TimeMsg
from geometry_msgs.msg import Point, PoseStamped
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, RegionOfInterest
from std_srvs.srv import Trigger

from essen_ros.msg import SceneObject as SceneObjectMsg
from essen_ros.msg import SceneTruth
from essen_ros.ros.runtime import (EXIT_STARTUP_ERROR, StartupError,  # noqa: F401
                                   declare_read_only_parameters, run_node)

NODE_NAME = "essen_sim"
IMAGE_TOPIC = "camera/image_raw"
CAMERA_INFO_TOPIC = "camera/camera_info"
CAMERA_POSE_TOPIC = "camera/pose"
SCENE_TRUTH_TOPIC = "scene_truth"
NEW_SCENE_SERVICE = "new_scene"

# The scene generator works in CLEVR's units (a large object has radius 0.7). On the topics the
# world is a tabletop: one unit is 10 cm, so a large cube is about 10 cm wide.
METRES_PER_UNIT = 0.1

# name -> (default, description, (low, high) or None). Read once at start.
PARAMETERS = {
    "rate": (5.0, "Frames per second.", (0.1, 120.0)),
    "width": (320, "Image width, pixels.", (16, 4096)),
    "height": (240, "Image height, pixels.", (16, 4096)),
    "seed": (0, "Random seed: same seed, same scenes and camera path.", (0, 2**31 - 1)),
    "scene_period": (20.0, "Seconds of simulated time between new scenes; 0 = only on the "
                     "new_scene service.", (0.0, 1e6)),
    "min_objects": (3, "Fewest objects in a scene.", (1, 10)),
    "max_objects": (6, "Most objects in a scene.", (1, 10)),
    "orbit_speed": (2.0, "Fastest camera swing around the table, degrees per second.", (0.0, 90.0)),
    "orbit_range": (20.0, "The camera swings this many degrees either side of the scene's "
                    "start azimuth.", (0.0, 180.0)),
    "shake": (0.15, "Random camera shake per frame (standard deviation, degrees), like a "
              "camera on a moving robot.", (0.0, 5.0)),
    "publish_clock": (False, "Publish /clock and stamp frames with simulated time (frame n at "
                      "n / rate s) for nodes that run with use_sim_time.", None),
    "frame_id": ("camera_optical_frame", "frame_id of the image, camera_info and scene_truth.", None),
    "world_frame_id": ("world", "frame_id of camera/pose (object positions are in this frame).", None),
    "reliable": (True, "Publish images with reliable QoS (reaches reliable and best-effort "
                 "subscribers); false: best effort, like many camera drivers.", None),
}


@dataclass
class Frame:
    """One rendered frame and what is true in it."""
    index: int
    scene_id: int
    scene: object            # essen_ros.data.scene.Scene
    render: object           # essen_ros.data.render.RenderResult


class CameraPath:
    """Where the camera is at simulated time t: a slow sinusoidal swing around the scene's own
    (randomly drawn) camera position plus a little random shake. Pure function of the scene,
    t and the shake generator."""

    def __init__(self, start_camera, orbit_speed_deg: float, orbit_range_deg: float,
                 shake_deg: float):
        offset = np.subtract(start_camera.position, start_camera.lookat)
        self.distance = float(np.linalg.norm(offset))
        self.azimuth = math.degrees(math.atan2(offset[1], offset[0]))
        self.elevation = math.degrees(math.asin(offset[2] / self.distance))
        self.lookat = tuple(start_camera.lookat)
        self.fovy = start_camera.fovy
        self.range = orbit_range_deg
        # azimuth = range * sin(w t) has top speed range * w: choose w (rad/s) to give
        # orbit_speed.
        self.omega = orbit_speed_deg / orbit_range_deg if orbit_range_deg > 0 else 0.0
        self.shake = shake_deg

    def camera_at(self, t: float, rng: np.random.Generator):
        from essen_ros.data.scene import orbit_camera
        azimuth = self.azimuth + self.range * math.sin(self.omega * t)
        elevation = self.elevation + 2.0 * math.sin(0.5 * self.omega * t)
        if self.shake > 0:
            azimuth += float(rng.normal(0.0, self.shake))
            elevation += float(rng.normal(0.0, self.shake))
        return orbit_camera(azimuth, elevation, self.distance, self.lookat, self.fovy)


class SimulatedWorld:
    """Scenes and frames, no ROS: sample a scene, render frame after frame from the moving
    camera. Deterministic given the seed and the sequence of calls."""

    def __init__(self, width: int, height: int, seed: int, min_objects: int, max_objects: int,
                 orbit_speed: float, orbit_range: float, shake: float, renderer=None):
        from essen_ros.data.scene import validate_request
        validate_request(min_objects=min_objects, max_objects=max_objects)
        self.width, self.height = width, height
        self.min_objects, self.max_objects = min_objects, max_objects
        self.orbit = (orbit_speed, orbit_range, shake)
        self.scene_rng = np.random.default_rng([seed, 0])
        self.shake_rng = np.random.default_rng([seed, 1])
        self._renderer = renderer
        self.scene = None
        self.scene_id = 0
        self.scene_start_frame = 0
        self.path = None

    @property
    def renderer(self):
        # Made on first use, i.e. on the thread that renders (OpenGL contexts are per thread).
        if self._renderer is None:
            from essen_ros.data.render import Renderer
            self._renderer = Renderer(self.width, self.height)
        return self._renderer

    def new_scene(self, start_frame: int) -> int:
        from essen_ros.data.scene import sample_scene
        self.scene_id += 1
        self.scene = sample_scene(self.scene_rng, min_objects=self.min_objects,
                                  max_objects=self.max_objects,
                                  image_size=(self.width, self.height),
                                  scene_id=str(self.scene_id))
        self.scene_start_frame = start_frame
        self.path = CameraPath(self.scene.camera, *self.orbit)
        return self.scene_id

    def render(self, frame_index: int, rate: float) -> Frame:
        if self.scene is None:
            self.new_scene(frame_index)
        t = (frame_index - self.scene_start_frame) / rate
        camera = self.path.camera_at(t, self.shake_rng)
        result = self.renderer.render(self.scene, camera=camera)
        return Frame(frame_index, self.scene_id, self.scene, result)

    def close(self):
        if self._renderer is not None:
            self._renderer.close()


# ---------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------

def camera_info_msg(width: int, height: int, fovy_deg: float) -> CameraInfo:
    """Pinhole calibration of the renderer's camera: square pixels, principal point at the
    image centre (the renderer projects u = w/2 + f x / z), no distortion."""
    f = (height / 2.0) / math.tan(math.radians(fovy_deg) / 2.0)
    cx, cy = width / 2.0, height / 2.0
    info = CameraInfo(width=width, height=height, distortion_model="plumb_bob")
    info.d = [0.0] * 5
    info.k = [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def roi(box) -> RegionOfInterest:
    """[x0, y0, x1, y1] (None: not in view) -> RegionOfInterest (all zero when None)."""
    if box is None:
        return RegionOfInterest()
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return RegionOfInterest(x_offset=x0, y_offset=y0, width=x1 - x0, height=y1 - y0)


def scene_truth_msg(frame: Frame) -> SceneTruth:
    objects = []
    for index, obj in enumerate(frame.scene.objects):
        x, y, z = (float(v) * METRES_PER_UNIT for v in obj.position)
        objects.append(SceneObjectMsg(
            index=index, shape=obj.shape, color=obj.color, material=obj.material, size=obj.size,
            box=roi(frame.render.boxes[index]), visible=bool(frame.render.visible[index]),
            position=Point(x=x, y=y, z=z)))
    return SceneTruth(scene_id=frame.scene_id, objects=objects)


def camera_pose_msg(camera) -> PoseStamped:
    """The camera's pose, position in metres, orientation of its optical frame (x right,
    y down, z forward)."""
    right, up, forward = camera.axes()
    rotation = np.stack([right, -up, forward], axis=1)
    msg = PoseStamped()
    msg.pose.position = Point(**{k: float(v) * METRES_PER_UNIT
                                 for k, v in zip("xyz", camera.position)})
    qw, qx, qy, qz = rotation_to_quaternion(rotation)
    msg.pose.orientation.w, msg.pose.orientation.x = qw, qx
    msg.pose.orientation.y, msg.pose.orientation.z = qy, qz
    return msg


def rotation_to_quaternion(m: np.ndarray) -> tuple:
    """3x3 rotation matrix -> (w, x, y, z), numerically stable for any rotation."""
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = (0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s)
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = ((m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s)
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = ((m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s)
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = ((m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s)
    return tuple(float(v) for v in q)


def quaternion_to_rotation(w: float, x: float, y: float, z: float) -> np.ndarray:
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def image_msg(rgb: np.ndarray) -> Image:
    height, width = rgb.shape[:2]
    return Image(height=height, width=width, encoding="rgb8", is_bigendian=0, step=width * 3,
                 data=np.ascontiguousarray(rgb, np.uint8).tobytes())


# ---------------------------------------------------------------------------------------------
# Node
# ---------------------------------------------------------------------------------------------

class SimNode(Node):
    def __init__(self):
        super().__init__(NODE_NAME)
        p = declare_read_only_parameters(self, PARAMETERS)
        self.params = p
        if p["min_objects"] > p["max_objects"]:
            raise StartupError(f"min_objects {p['min_objects']} > max_objects {p['max_objects']}")
        self.rate = float(p["rate"])
        self.frames_per_scene = round(p["scene_period"] * self.rate) if p["scene_period"] > 0 else 0
        try:
            self.world = SimulatedWorld(p["width"], p["height"], p["seed"], p["min_objects"],
                                        p["max_objects"], p["orbit_speed"], p["orbit_range"],
                                        p["shake"])
        except ValueError as error:
            raise StartupError(str(error)) from error

        # A few frames of history: a reliable subscriber that is briefly busy still gets every
        # frame (best-effort subscribers such as the node take the newest anyway).
        image_qos = QoSProfile(
            depth=5, history=HistoryPolicy.KEEP_LAST,
            reliability=ReliabilityPolicy.RELIABLE if p["reliable"] else ReliabilityPolicy.BEST_EFFORT)
        # Ground truth must not be lost: scorers match every result against it.
        truth_qos = QoSProfile(depth=50, history=HistoryPolicy.KEEP_LAST,
                               reliability=ReliabilityPolicy.RELIABLE,
                               durability=DurabilityPolicy.VOLATILE)
        self.image_pub = self.create_publisher(Image, IMAGE_TOPIC, image_qos)
        self.info_pub = self.create_publisher(CameraInfo, CAMERA_INFO_TOPIC, image_qos)
        self.truth_pub = self.create_publisher(SceneTruth, SCENE_TRUTH_TOPIC, truth_qos)
        self.pose_pub = self.create_publisher(PoseStamped, CAMERA_POSE_TOPIC, truth_qos)
        self.clock_pub = (self.create_publisher(Clock, "/clock", 10) if p["publish_clock"] else None)
        self.create_service(Trigger, NEW_SCENE_SERVICE, self._on_new_scene)

        self._lock = threading.Lock()     # guards the world between service and render thread
        self._scene_requested = False
        self._stopping = threading.Event()
        self._started = threading.Event()
        self.startup_error: str | None = None
        self.frames_published = 0
        self.frames_late = 0
        self._thread = threading.Thread(target=self._render_loop, name="essen_sim_render",
                                        daemon=True)
        self._thread.start()
        self._started.wait(timeout=60.0)
        if self.startup_error:
            raise StartupError(self.startup_error)
        self.get_logger().info(
            f"publishing {p['width']}x{p['height']} rgb8 at {self.rate:g} Hz on "
            f"{self.image_pub.topic_name} ({'reliable' if p['reliable'] else 'best effort'}), "
            f"{self.info_pub.topic_name}, {self.truth_pub.topic_name}, {self.pose_pub.topic_name}; "
            f"new scene every {p['scene_period']:g} s and on {self.resolve_service_name(NEW_SCENE_SERVICE)}"
            + ("; publishing /clock (simulated time)" if self.clock_pub else ""))

    def _on_new_scene(self, request, response):
        with self._lock:
            self._scene_requested = True
        response.success = True
        response.message = "a new scene is shown from the next frame"
        return response

    def _stamp(self, frame_index: int) -> TimeMsg:
        if self.clock_pub is None:
            return self.get_clock().now().to_msg()
        nanoseconds = round(frame_index * 1e9 / self.rate)
        stamp = TimeMsg(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)
        self.clock_pub.publish(Clock(clock=stamp))
        return stamp

    def _render_loop(self):
        try:
            self.world.renderer  # noqa: B018 - open the GL context on this thread, fail early
        except Exception as error:  # noqa: BLE001 - reported to main() as a startup error
            self.startup_error = f"cannot render: {error}"
            self._started.set()
            return
        self._started.set()
        try:
            self._render_frames()
        finally:
            # The GL context belongs to this thread: free it here, not at interpreter exit.
            self.world.close()

    def _render_frames(self):
        period = 1.0 / self.rate
        next_time = time.monotonic()
        frame_index = 0
        while not self._stopping.is_set():
            with self._lock:
                due = self.frames_per_scene and frame_index - self.world.scene_start_frame >= self.frames_per_scene
                if self.world.scene is None or self._scene_requested or due:
                    scene_id = self.world.new_scene(frame_index)
                    self._scene_requested = False
                    self.get_logger().info(
                        f"scene {scene_id}: " + ", ".join(
                            f"{o.size} {o.color} {o.material} {o.shape}" for o in self.world.scene.objects))
                try:
                    frame = self.world.render(frame_index, self.rate)
                except Exception as error:  # noqa: BLE001 - keep the camera alive, say why
                    self.get_logger().error(f"render failed on frame {frame_index}: {error}",
                                            throttle_duration_sec=5.0)
                    frame = None
            if frame is not None:
                self._publish(frame)
            frame_index += 1
            next_time += period
            delay = next_time - time.monotonic()
            if delay > 0:
                self._stopping.wait(delay)
            elif delay < -period:
                # Rendering slower than the rate: don't burst to catch up, carry on from now.
                self.frames_late += 1
                next_time = time.monotonic()
                self.get_logger().warning(
                    f"rendering cannot keep {self.rate:g} Hz on this machine ({self.frames_late} "
                    "frames late so far): lower rate, width or height", throttle_duration_sec=10.0)

    def _publish(self, frame: Frame):
        stamp = self._stamp(frame.index)
        frame_id = self.params["frame_id"]
        # Truth and pose first: whoever scores a result must already know what was shown.
        truth = scene_truth_msg(frame)
        truth.header.stamp, truth.header.frame_id = stamp, frame_id
        self.truth_pub.publish(truth)
        pose = camera_pose_msg(frame.render.camera)
        pose.header.stamp, pose.header.frame_id = stamp, self.params["world_frame_id"]
        self.pose_pub.publish(pose)
        info = camera_info_msg(self.world.width, self.world.height, frame.render.camera.fovy)
        image = image_msg(frame.render.rgb)
        for msg in (info, image):
            msg.header.stamp, msg.header.frame_id = stamp, frame_id
        self.info_pub.publish(info)
        self.image_pub.publish(image)
        self.frames_published += 1

    def close(self):
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10.0)


def main(argv: list[str] | None = None) -> int:
    return run_node(SimNode, NODE_NAME, argv,
                    farewell=lambda node: f"shutting down after {node.frames_published} frames")


if __name__ == "__main__":
    sys.exit(main())
