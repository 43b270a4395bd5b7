"""The Gazebo setup cannot run here (no Gazebo on these machines), so these tests pin what can
be checked without it: the SDF world is well-formed and has what the launch file relies on,
and the camera topic names agree between the SDF, the bridge config and the launch files."""
from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
WORLD = REPO / "sim" / "essen_world.sdf"
BRIDGE = REPO / "sim" / "gz_bridge.yaml"
GAZEBO_LAUNCH = REPO / "launch" / "gazebo.launch.py"
SIM_LAUNCH = REPO / "launch" / "sim.launch.py"


def module_constants(path: Path) -> dict:
    """Top-level NAME = "literal" assignments of a launch file (it cannot be imported here:
    the ROS `launch` package is not installable on these machines)."""
    constants = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return constants


def launch_arguments(path: Path) -> dict:
    """name -> (default expression source, description) for each entry of the launch file's
    ARGUMENTS table, which it turns into DeclareLaunchArgument actions."""
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "ARGUMENTS":
            out = {}
            for entry in node.value.elts:
                name, default, description = entry.elts
                out[ast.literal_eval(name)] = (ast.unparse(default), ast.literal_eval(description))
            return out
    raise AssertionError(f"{path.name} has no ARGUMENTS table")


def camera_sensor(root):
    sensors = [s for s in root.iter("sensor") if s.get("type") == "camera"]
    assert len(sensors) == 1, f"expected one camera sensor, found {len(sensors)}"
    return sensors[0]


def bridge_entry(ros_type: str) -> dict:
    entries = [e for e in yaml.safe_load(BRIDGE.read_text()) if e["ros_type_name"] == ros_type]
    assert len(entries) == 1, f"expected one {ros_type} bridge entry, found {len(entries)}"
    return entries[0]


def test_world_is_valid_sdf_with_table_objects_camera_and_rendering_systems():
    root = ET.parse(WORLD).getroot()
    # <camera_info_topic> needs SDF 1.9 or newer (Gazebo Harmonic reads up to 1.11).
    assert root.tag == "sdf" and tuple(int(p) for p in root.get("version").split(".")) >= (1, 9)
    world = root.find("world")
    models = {m.get("name"): m for m in world.findall("model")}
    assert "table" in models
    plugin_files = {p.get("filename") for p in world.findall("plugin")}
    # Without the Sensors system (and a render engine) a camera sensor publishes nothing.
    assert "gz-sim-sensors-system" in plugin_files
    assert world.find("plugin[@filename='gz-sim-sensors-system']/render_engine") is not None
    shapes = set()
    for name, model in models.items():
        for visual in model.iter("visual"):
            geometry = visual.find("geometry")
            shapes.update(child.tag for child in geometry)
    assert {"box", "sphere", "cylinder"} <= shapes, shapes
    # Every object model is named size_colour_material_shape from the package's vocabulary.
    from essen_ros.data.vocab import COLORS, MATERIALS, SHAPES, SIZES
    objects = [n for n in models if n not in ("ground", "table", "essen_camera")]
    assert len(objects) >= 3
    for name in objects:
        size, color, material, shape = name.split("_")
        assert size in SIZES and color in COLORS and material in MATERIALS and shape in SHAPES, name


def test_camera_sensor_is_complete_and_looks_down_at_the_table():
    sensor = camera_sensor(ET.parse(WORLD).getroot())
    camera = sensor.find("camera")
    assert int(camera.findtext("image/width")) > 0 and int(camera.findtext("image/height")) > 0
    assert 0.3 < float(camera.findtext("horizontal_fov")) < 2.0
    assert float(sensor.findtext("update_rate")) > 0
    # The camera model's pose pitches down (positive pitch in Gazebo looks down).
    pose = [float(v) for v in ET.parse(WORLD).getroot().find(".//model[@name='essen_camera']/pose").text.split()]
    assert pose[2] > 0.75 and pose[4] > 0.2


def test_camera_topics_agree_between_sdf_bridge_and_gazebo_launch():
    sensor = camera_sensor(ET.parse(WORLD).getroot())
    image_topic = sensor.findtext("topic")
    info_topic = sensor.findtext("camera/camera_info_topic")
    image_bridge = bridge_entry("sensor_msgs/msg/Image")
    info_bridge = bridge_entry("sensor_msgs/msg/CameraInfo")
    assert image_bridge["gz_topic_name"] == image_topic
    assert info_bridge["gz_topic_name"] == info_topic
    assert image_bridge["direction"] == info_bridge["direction"] == "GZ_TO_ROS"
    assert image_bridge["gz_type_name"] == "gz.msgs.Image"
    assert info_bridge["gz_type_name"] == "gz.msgs.CameraInfo"
    constants = module_constants(GAZEBO_LAUNCH)
    # The launch file remaps the node's "image" to the bridged ROS topic.
    assert constants["IMAGE_TOPIC"] == image_bridge["ros_topic_name"]
    assert constants["CAMERA_INFO_TOPIC"] == info_bridge["ros_topic_name"]
    args = launch_arguments(GAZEBO_LAUNCH)
    assert args["image_topic"][0] == "IMAGE_TOPIC"
    assert '("image", arg("image_topic"))' in GAZEBO_LAUNCH.read_text()
    # use_sim_time nodes need Gazebo's clock.
    assert bridge_entry("rosgraph_msgs/msg/Clock")["gz_topic_name"] == "/clock"


def test_gazebo_launch_points_at_the_shipped_world_and_bridge_config():
    # Defaults are os.path.join(SHARE, <folder>, <file>) with SHARE the installed share dir,
    # i.e. the repository root in a checkout: the files must be there.
    args = launch_arguments(GAZEBO_LAUNCH)
    for name, expected in (("world", WORLD), ("bridge_config", BRIDGE)):
        call = ast.parse(args[name][0]).body[0].value
        assert ast.unparse(call.func) == "os.path.join" and ast.unparse(call.args[0]) == "SHARE"
        parts = [ast.literal_eval(a) for a in call.args[1:]]
        assert REPO.joinpath(*parts) == expected and expected.is_file()
    text = GAZEBO_LAUNCH.read_text()
    assert "ros_gz_sim" in text and '"ros_gz_bridge"' in text and '"parameter_bridge"' in text
    assert '"config_file": arg("bridge_config")' in text


def test_every_launch_argument_has_a_description_and_is_used():
    for path in (GAZEBO_LAUNCH, SIM_LAUNCH):
        text = path.read_text()
        for name, (_, description) in launch_arguments(path).items():
            assert len(description) > 10, f"{path.name}: {name} has no real description"
            assert f'arg("{name}")' in text, f"{path.name}: argument {name} is declared but never used"
        assert "FASTDDS_DEFAULT_PROFILES_FILE" in text


def test_sim_launch_topics_match_the_simulator_and_the_node():
    constants = module_constants(SIM_LAUNCH)
    from essen_ros.ros import sim
    assert constants["IMAGE_TOPIC"] == sim.IMAGE_TOPIC
    assert constants["CAMERA_INFO_TOPIC"] == sim.CAMERA_INFO_TOPIC
    assert constants["SCENE_TRUTH_TOPIC"] == sim.SCENE_TRUTH_TOPIC
    assert '("image", IMAGE_TOPIC)' in SIM_LAUNCH.read_text()


def test_sim_launch_passes_every_simulator_and_scorer_parameter_it_declares():
    """Each launch argument that sets a parameter names one the process really declares."""
    from essen_ros.ros import scorer, sim
    text = SIM_LAUNCH.read_text()
    tree = ast.parse(text)
    passed: dict[str, set] = {}
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Node":
            kw = {k.arg: k.value for k in call.keywords}
            executable = ast.literal_eval(kw["executable"])
            params = set()
            for d in ast.walk(kw["parameters"]):
                if isinstance(d, ast.Dict):
                    params |= {ast.literal_eval(k) for k in d.keys}
            passed[executable] = params
    assert passed["essen_sim"] - {"use_sim_time"} <= set(sim.PARAMETERS)
    assert passed["essen_scorer"] - {"use_sim_time"} <= set(scorer.PARAMETERS)
