"""Simulated camera + perception node + closed-loop scorer, on any machine with ROS 2.

    ros2 launch essen_ros sim.launch.py duration:=60 report_dir:=sim_report

essen_sim renders a tabletop scene live on camera/image_raw (a slowly orbiting camera, a new
scene every scene_period seconds) and its ground truth on scene_truth; essen_node grounds
commands and answers questions on that stream; essen_scorer sends commands and questions made
from the current scene, scores the node's results by image stamp, prints a running summary and
writes the evaluation report when duration has passed (or on Ctrl-C).
Without `ros2 launch` (pip-only installs), `essen-scorer --launch` starts the same three
processes (essen-sim, essen-node, essen-scorer) in one command.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

SHARE = get_package_share_directory("essen_ros")

# Topic names shared by the three processes (relative: they follow the namespace).
IMAGE_TOPIC = "camera/image_raw"
CAMERA_INFO_TOPIC = "camera/camera_info"
SCENE_TRUTH_TOPIC = "scene_truth"

ARGUMENTS = [
    # where and how
    ("namespace", "", "ROS namespace for all three nodes."),
    ("fastdds_profile", EnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE",
                                            default_value=os.path.join(SHARE, "config", "fastdds.xml")),
     "Fast DDS XML profile (the shipped one enlarges shared memory so images are not lost)."),
    ("sim_time", "false", "Simulator publishes /clock and every node uses it (use_sim_time)."),
    # simulated camera
    ("rate", "5.0", "Camera frame rate, Hz."),
    ("width", "320", "Image width, pixels."),
    ("height", "240", "Image height, pixels."),
    ("seed", "0", "Random seed of the scenes and camera path (same seed, same frames)."),
    ("scene_period", "20.0", "Seconds between new scenes; 0 = only on the new_scene service."),
    ("min_objects", "3", "Fewest objects in a scene."),
    ("max_objects", "6", "Most objects in a scene."),
    ("orbit_speed", "2.0", "Camera orbit speed around the table, degrees per second."),
    ("orbit_range", "20.0", "Camera swings this many degrees either side of its start azimuth."),
    ("shake", "0.15", "Random camera shake per frame, degrees (standard deviation)."),
    # perception node
    ("checkpoint", "", "Model checkpoint folder for essen_node; empty = the shipped default model."),
    ("device", "cpu", "Torch device for essen_node."),
    # scorer
    ("duration", "60.0", "Seconds of scoring (from the node's first result), then the report; 0 = until Ctrl-C."),
    ("query_period", "4.0", "Seconds between new commands/questions sent by the scorer."),
    ("negative_rate", "0.2", "Share of commands that name nothing in the scene (answer: not found)."),
    ("startup_timeout", "120.0", "Scorer gives up when the node sends no result this many seconds after start."),
    ("report_dir", "sim_report", "Folder the scorer writes its report into."),
    ("record_frames", "false", "Scorer also saves every scored frame (PNG + manifest) in report_dir."),
]


def generate_launch_description():
    declared = [DeclareLaunchArgument(name, default_value=default, description=description)
                for name, default, description in ARGUMENTS]
    arg = LaunchConfiguration
    sim_time = ParameterValue(arg("sim_time"), value_type=bool)

    sim = Node(
        package="essen_ros", executable="essen_sim", name="essen_sim", namespace=arg("namespace"),
        output="screen",
        parameters=[{
            "rate": ParameterValue(arg("rate"), value_type=float),
            "width": ParameterValue(arg("width"), value_type=int),
            "height": ParameterValue(arg("height"), value_type=int),
            "seed": ParameterValue(arg("seed"), value_type=int),
            "scene_period": ParameterValue(arg("scene_period"), value_type=float),
            "min_objects": ParameterValue(arg("min_objects"), value_type=int),
            "max_objects": ParameterValue(arg("max_objects"), value_type=int),
            "orbit_speed": ParameterValue(arg("orbit_speed"), value_type=float),
            "orbit_range": ParameterValue(arg("orbit_range"), value_type=float),
            "shake": ParameterValue(arg("shake"), value_type=float),
            "publish_clock": sim_time,
        }],
    )
    node = Node(
        package="essen_ros", executable="essen_node", name="essen_node", namespace=arg("namespace"),
        output="screen",
        parameters=[{
            "checkpoint": arg("checkpoint"),
            "device": arg("device"),
            "use_sim_time": sim_time,
        }],
        # The node listens on the generic "image"; the simulator publishes a camera topic.
        remappings=[("image", IMAGE_TOPIC)],
    )
    scorer = Node(
        package="essen_ros", executable="essen_scorer", name="essen_scorer", namespace=arg("namespace"),
        output="screen",
        parameters=[{
            "duration": ParameterValue(arg("duration"), value_type=float),
            "query_period": ParameterValue(arg("query_period"), value_type=float),
            "negative_rate": ParameterValue(arg("negative_rate"), value_type=float),
            "startup_timeout": ParameterValue(arg("startup_timeout"), value_type=float),
            "report_dir": arg("report_dir"),
            "record_frames": ParameterValue(arg("record_frames"), value_type=bool),
            "seed": ParameterValue(arg("seed"), value_type=int),
            "use_sim_time": sim_time,
        }],
    )
    return LaunchDescription([
        *declared,
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", arg("fastdds_profile")),
        sim, node, scorer,
    ])
