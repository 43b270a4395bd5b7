"""Start-up failures and shutdown of the perception node, as a separate process."""
from __future__ import annotations

import signal
import threading
import time

import pytest
from sensor_msgs.msg import Image
from std_msgs.msg import String

from essen_ros.msg import Grounding
from node_harness import (NODE_SCRIPT, NodeProcess, RosClient, make_image_msg, node_env,
                          sample_image, tiny_checkpoint_path)

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
])
def test_invalid_start_parameters_are_refused_by_name(spawn, parameter, named):
    code, output = _run_to_exit(spawn, "-p", parameter)
    assert code == 2, output
    assert f"parameter {named}" in output
    assert "Traceback" not in output


def test_sigint_and_sigterm_shut_down_cleanly_mid_stream(ros_env, tmp_path_factory):
    """Both signals while frames stream in and the worker is busy: exit code 0, the worker
    joined, no traceback, within a few seconds."""
    checkpoint = tiny_checkpoint_path(tmp_path_factory)
    env = node_env(ros_env)
    nodes = {signum: NodeProcess(env, "-r", f"__ns:=/life_{signum.name.lower()}",
                                 "-p", f"checkpoint:={checkpoint}")
             for signum in (signal.SIGINT, signal.SIGTERM)}
    client = RosClient("node_lifecycle_test")
    stop = threading.Event()
    try:
        for node in nodes.values():
            node.wait_started()
        publishers, collectors = {}, {}
        for signum in nodes:
            namespace = f"/life_{signum.name.lower()}"
            publishers[signum] = client.publisher(Image, f"{namespace}/image", reliable=False)
            command = client.publisher(String, f"{namespace}/command")
            collectors[signum] = client.collect(Grounding, f"{namespace}/grounding")
            client.wait_matched(command)
            command.publish(String(data="the red cube"))
            client.wait_matched(publishers[signum])
        frame = make_image_msg(sample_image(320, 240), "rgb8")

        def stream():
            while not stop.is_set():
                for publisher in publishers.values():
                    publisher.publish(frame)
                time.sleep(1 / 30)

        streamer = threading.Thread(target=stream, daemon=True)
        streamer.start()
        for collector in collectors.values():
            collector.wait_count(lambda m: True, 3)  # inference is running

        for signum, node in nodes.items():
            node.process.send_signal(signum)
        for signum, node in nodes.items():
            started = time.monotonic()
            code, output = node.stop(signum, timeout=15)
            assert code == 0, f"{signum.name}: exit {code}\n{output}"
            assert time.monotonic() - started < 10
            assert "shutting down" in output
            assert "Traceback" not in output and "Exception" not in output, output
    finally:
        stop.set()
        client.close()
        for node in nodes.values():
            node.stop(signal.SIGKILL, timeout=5)
