"""Gazebo (Harmonic or newer) world with a camera, bridged to ROS, feeding essen_node.

    ros2 launch essen_ros gazebo.launch.py            # headless server
    ros2 launch essen_ros gazebo.launch.py gui:=true  # with the Gazebo window

Needs Gazebo and the ros_gz packages (ros_gz_sim, ros_gz_bridge), which these development
machines cannot install: this file is kept minimal and standard and is untested here
(test/test_gazebo_files.py only checks that the SDF is valid XML and that the camera topics in
the SDF, sim/gz_bridge.yaml and this file agree).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, SetEnvironmentVariable
from launch.conditions import IfCondition, UnlessCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node

SHARE = get_package_share_directory("essen_ros")

# The camera sensor in sim/essen_world.sdf publishes here; sim/gz_bridge.yaml bridges it to
# the same ROS name.
IMAGE_TOPIC = "/camera/image_raw"
CAMERA_INFO_TOPIC = "/camera/camera_info"

ARGUMENTS = [
    ("world", os.path.join(SHARE, "sim", "essen_world.sdf"), "SDF world file to run."),
    ("bridge_config", os.path.join(SHARE, "sim", "gz_bridge.yaml"),
     "ros_gz_bridge YAML: which Gazebo topics reach ROS (camera image, camera info, clock)."),
    ("gui", "false", "Also open the Gazebo window (false: server only, headless)."),
    ("image_topic", IMAGE_TOPIC, "ROS image topic the bridge publishes and essen_node reads."),
    ("checkpoint", "", "Model checkpoint folder for essen_node; empty = the shipped default model."),
    ("device", "cpu", "Torch device for essen_node."),
    ("namespace", "", "ROS namespace of essen_node (its command/grounding/... topics)."),
    ("fastdds_profile", EnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE",
                                            default_value=os.path.join(SHARE, "config", "fastdds.xml")),
     "Fast DDS XML profile (the shipped one enlarges shared memory so images are not lost)."),
]


def generate_launch_description():
    declared = [DeclareLaunchArgument(name, default_value=default, description=description)
                for name, default, description in ARGUMENTS]
    arg = LaunchConfiguration
    gz_sim_launch = os.path.join(get_package_share_directory("ros_gz_sim"), "launch", "gz_sim.launch.py")

    # -r: start running; -s: server only (no GUI).
    gazebo_headless = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(gz_sim_launch),
        launch_arguments={"gz_args": ["-r -s ", arg("world")]}.items(),
        condition=UnlessCondition(arg("gui")),
    )
    gazebo_with_gui = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(gz_sim_launch),
        launch_arguments={"gz_args": ["-r ", arg("world")]}.items(),
        condition=IfCondition(arg("gui")),
    )
    bridge = Node(
        package="ros_gz_bridge", executable="parameter_bridge", name="essen_gz_bridge", output="screen",
        parameters=[{"config_file": arg("bridge_config"), "use_sim_time": True}],
    )
    node = Node(
        package="essen_ros", executable="essen_node", name="essen_node", namespace=arg("namespace"),
        output="screen",
        parameters=[{
            "checkpoint": arg("checkpoint"),
            "device": arg("device"),
            "use_sim_time": True,  # Gazebo's clock, bridged on /clock
        }],
        remappings=[("image", arg("image_topic"))],
    )
    return LaunchDescription([
        *declared,
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", arg("fastdds_profile")),
        gazebo_headless, gazebo_with_gui, bridge, node,
    ])
