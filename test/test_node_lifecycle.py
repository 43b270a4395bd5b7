"""Start-up failures of the perception node, as a separate process. (Clean shutdown on
SIGINT/SIGTERM mid-stream is the last test of test_node_io.py, which owns running nodes.)"""
from __future__ import annotations

import pytest

from node_harness import NODE_SCRIPT, node_env

pytestmark = pytest.mark.ros


def _run_to_exit(spawn, *ros_args, env=None, timeout=60):
    process = spawn([str(NODE_SCRIPT), "--ros-args", *ros_args], **({"env": env} if env else {}))
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


@pytest.mark.parametrize("how", ["parameter", "ESSEN_MODEL"])
def test_missing_checkpoint_is_a_clear_error_naming_the_path(spawn, ros_env, tmp_path, how):
    missing = tmp_path / "no-such-model"
    if how == "parameter":
        code, output = _run_to_exit(spawn, "-p", f"checkpoint:={missing}")
    else:
        code, output = _run_to_exit(spawn, env=node_env(ros_env, ESSEN_MODEL=str(missing)))
    assert code == 2, output
    assert f"checkpoint not found: {missing}" in output
    assert "Traceback" not in output


def test_incompatible_checkpoint_is_a_clear_error_naming_the_path(spawn, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.yaml").write_text("kind: banana\n")
    code, output = _run_to_exit(spawn, "-p", f"checkpoint:={broken}")
    assert code == 2, output
    assert f"cannot load checkpoint {broken}" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("parameter, named", [
    ("image_transport:=carrier_pigeon", "image_transport"),
    ("num_threads:=-3", "num_threads"),
    ("image_qos_depth:=many", "image_qos_depth"),
    ("max_pixels:=0", "max_pixels"),
])
def test_invalid_start_parameters_are_refused_by_name(spawn, parameter, named):
    code, output = _run_to_exit(spawn, "-p", parameter)
    assert code == 2, output
    lines = [line for line in output.splitlines() if f"parameter {named}" in line]
    assert lines, output
    # one readable line: not rclpy's wrapper text with the name appended again
    assert not lines[0].rstrip().endswith(f": {named}") and "for parameter. Reason" not in lines[0]
    assert "Traceback" not in output

