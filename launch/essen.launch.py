"""Start the ESsEN perception node with config/essen.yaml.

    ros2 launch essen_ros essen.launch.py image_topic:=/camera/image_raw
    ros2 launch essen_ros essen.launch.py image_topic:=/camera/image_raw image_transport:=compressed
    ros2 launch essen_ros essen.launch.py --show-args     # every argument, described

The node's `image` input is remapped to `image_topic` and `image/compressed` to
`<image_topic>/compressed` (image_transport's naming), so either transport follows one argument.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    share = get_package_share_directory("essen_ros")
    arguments = [
        DeclareLaunchArgument(
            "namespace", default_value="",
            description="Namespace of the node and its relative topics (grounding, answer, ...)."),
        DeclareLaunchArgument(
            "image_topic", default_value="/camera/image_raw",
            description="Camera topic; with image_transport:=compressed the node reads "
                        "<image_topic>/compressed."),
        DeclareLaunchArgument(
            "image_transport", default_value="raw", choices=["raw", "compressed"],
            description="raw: sensor_msgs/Image; compressed: sensor_msgs/CompressedImage."),
        DeclareLaunchArgument(
            "checkpoint", default_value="",
            description="Checkpoint folder; empty uses the shipped model "
                        "(share/essen_ros/models/essen-default or $ESSEN_MODEL)."),
        DeclareLaunchArgument(
            "device", default_value="cpu", description="Torch device: cpu, cuda:0, ..."),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false", choices=["true", "false"],
            description="Use /clock (bag replay, simulation) for stamps and input age."),
        DeclareLaunchArgument(
            "params_file", default_value=os.path.join(share, "config", "essen.yaml"),
            description="Node parameters (YAML); the arguments above override its values."),
        DeclareLaunchArgument(
            "fastdds_profile",
            default_value=EnvironmentVariable(
                "FASTDDS_DEFAULT_PROFILES_FILE",
                default_value=os.path.join(share, "config", "fastdds.xml")),
            description="Fast DDS XML profile (large shared-memory segment for images); "
                        "defaults to $FASTDDS_DEFAULT_PROFILES_FILE, else the shipped one."),
        DeclareLaunchArgument(
            "log_level", default_value="info", choices=["debug", "info", "warn", "error"],
            description="Logging level of the node."),
    ]

    image_topic = LaunchConfiguration("image_topic")
    node = Node(
        package="essen_ros",
        executable="essen_node",
        name="essen_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "checkpoint": ParameterValue(LaunchConfiguration("checkpoint"), value_type=str),
                "device": ParameterValue(LaunchConfiguration("device"), value_type=str),
                "image_transport": ParameterValue(LaunchConfiguration("image_transport"),
                                                  value_type=str),
                "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"),
                                               value_type=bool),
            },
        ],
        remappings=[
            ("image", image_topic),
            ("image/compressed", [image_topic, "/compressed"]),
        ],
        ros_arguments=["--log-level", LaunchConfiguration("log_level")],
    )

    return LaunchDescription([
        *arguments,
        # Applied to the node's environment before it starts (DDS reads it at init).
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE",
                               LaunchConfiguration("fastdds_profile")),
        node,
    ])
