"""launch/essen.launch.py and config/essen.yaml against the node they start.

`ros2 launch` cannot run here (no ROS `launch` package on any reachable registry; the PyPI
package named `launch` is an unrelated tool). Where ROS `launch` is importable the launch
description is generated for real; otherwise the file is parsed and its declared arguments,
node parameters and remappings are listed and checked. Either way config/essen.yaml is
checked against the node's declared parameters (test_node_control.py starts its node from
this file and reads the values back)."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import yaml

from essen_ros.ros.node import PARAMS, PARAMS_BY_NAME

REPO = Path(__file__).resolve().parent.parent
LAUNCH_FILE = REPO / "launch" / "essen.launch.py"
CONFIG = REPO / "config" / "essen.yaml"
KNOBS = {"namespace", "image_topic", "image_transport", "checkpoint", "device", "use_sim_time",
         "params_file"}


def _ros_launch_available() -> bool:
    try:
        import launch
        import launch_ros  # noqa: F401
    except ImportError:
        return False
    return hasattr(launch, "LaunchDescription")  # not the unrelated PyPI `launch`


def _literal(node):
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def parsed_launch() -> dict:
    """Arguments (name -> description, default, choices), the node's parameter overrides,
    remappings and environment settings, read from the launch file's syntax tree."""
    tree = ast.parse(LAUNCH_FILE.read_text())
    found = {"arguments": {}, "node_parameters": set(), "remapped": [], "environment": [],
             "executable": None, "package": None}
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        name = getattr(call.func, "id", getattr(call.func, "attr", ""))
        keywords = {k.arg: k.value for k in call.keywords}
        if name == "DeclareLaunchArgument":
            found["arguments"][_literal(call.args[0])] = {
                "description": _literal(keywords.get("description", ast.Constant(""))) or "",
                "has_default": "default_value" in keywords,
                "choices": _literal(keywords["choices"]) if "choices" in keywords else None,
            }
        elif name == "Node":
            found["executable"] = _literal(keywords["executable"])
            found["package"] = _literal(keywords["package"])
            for entry in keywords["parameters"].elts:
                if isinstance(entry, ast.Dict):
                    found["node_parameters"] |= {_literal(k) for k in entry.keys}
            for pair in keywords["remappings"].elts:
                found["remapped"].append(_literal(pair.elts[0]))
        elif name == "SetEnvironmentVariable":
            found["environment"].append(_literal(call.args[0]))
    return found


def loaded_launch_arguments(monkeypatch) -> dict:
    """The same, from the launch description itself (robots with ROS 2)."""
    import ament_index_python.packages as ament
    from launch.actions import DeclareLaunchArgument

    monkeypatch.setattr(ament, "get_package_share_directory", lambda _name: str(REPO))
    spec = importlib.util.spec_from_file_location("essen_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    return {a.name: {"description": a.description, "has_default": a.default_value is not None,
                     "choices": a.choices}
            for a in description.entities if isinstance(a, DeclareLaunchArgument)}


@pytest.fixture
def launch_arguments(monkeypatch):
    if _ros_launch_available():
        return loaded_launch_arguments(monkeypatch)
    return parsed_launch()["arguments"]


def test_every_knob_is_a_described_launch_argument(launch_arguments):
    print("launch arguments:", *(f"  {name}: {a['description']}"
                                 for name, a in launch_arguments.items()), sep="\n")
    assert KNOBS <= set(launch_arguments)
    for name, argument in launch_arguments.items():
        assert len(argument["description"]) > 15, f"{name} has no real description"
        assert argument["has_default"], f"{name} has no default"
    assert list(launch_arguments["image_transport"]["choices"]) == list(
        PARAMS_BY_NAME["image_transport"].choices)


def test_launch_starts_the_installed_node_with_the_config_and_dds_profile():
    found = parsed_launch()
    assert (found["package"], found["executable"]) == ("essen_ros", "essen_node")
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert "scripts/essen_node" in cmake and (REPO / "scripts" / "essen_node").is_file()
    assert "FASTDDS_DEFAULT_PROFILES_FILE" in found["environment"]
    assert '"config", "essen.yaml"' in LAUNCH_FILE.read_text()
    # Every parameter the launch file sets is one the node declares (or ROS's own).
    declared = {spec.name for spec in PARAMS} | {"use_sim_time"}
    assert found["node_parameters"] <= declared
    # Both transports follow the one image_topic argument.
    assert {"image", "image/compressed"} <= set(found["remapped"])


def _config_parameters() -> dict:
    data = yaml.safe_load(CONFIG.read_text())
    assert list(data) == ["/**"], "config must match the node in any namespace"
    return data["/**"]["ros__parameters"]


def test_config_sets_only_declared_parameters_with_valid_values():
    values = _config_parameters()
    for name, value in values.items():
        assert name in PARAMS_BY_NAME, f"config/essen.yaml sets unknown parameter {name}"
        spec = PARAMS_BY_NAME[name]
        if spec.default is not None:
            assert type(value) is type(spec.default), f"{name}: {value!r} has the wrong type"
        if spec.value_range:
            assert spec.value_range[0] <= value <= spec.value_range[1], name
        if spec.choices:
            assert value in spec.choices, name


def test_config_mentions_every_node_parameter():
    text = CONFIG.read_text()
    values = _config_parameters()
    for spec in PARAMS:
        assert spec.name in values or f"# {spec.name}:" in text, (
            f"config/essen.yaml does not mention {spec.name}")
