"""Shared test fixtures. Tests that need ROS start real processes and talk over real DDS,
isolated per test session: own ROS_DOMAIN_ID, discovery kept on this host, the shipped
Fast DDS profile."""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
CLEVR_DEV = Path(os.environ.get("ESSEN_CLEVR_DEV", SHARED_DATA / "clevr-dev"))

# One domain per pytest run (0..101 are valid on every platform; avoid 0, the default).
_DOMAIN = str(random.Random(os.getpid()).randint(1, 100))


def _ros_env() -> dict:
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = _DOMAIN
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO / "config" / "fastdds.xml"))
    env["PYTHONUNBUFFERED"] = "1"
    # Child processes import the checkout's sources, like the tests themselves.
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


# The test process itself joins the same isolated domain.
os.environ.update({k: v for k, v in _ros_env().items() if k != "PYTHONPATH"})


@pytest.fixture(scope="session")
def ros_env() -> dict:
    """Environment for child processes that take part in DDS tests."""
    return _ros_env()


@pytest.fixture
def spawn(ros_env):
    """Start a child process (python -m module or a console script) in the test's DDS
    domain; every process is terminated (SIGINT, then SIGKILL) at teardown."""
    procs: list[subprocess.Popen] = []

    def _spawn(args, **kw):
        cmd = [sys.executable, *args] if args[0] in ("-m", "-c") or args[0].endswith(".py") else list(args)
        p = subprocess.Popen(cmd, env=kw.pop("env", ros_env), cwd=kw.pop("cwd", REPO),
                             stdout=kw.pop("stdout", subprocess.PIPE),
                             stderr=kw.pop("stderr", subprocess.STDOUT), text=True, **kw)
        procs.append(p)
        return p

    yield _spawn
    for p in procs:
        if p.poll() is None:
            p.send_signal(2)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """One random-weight tiny checkpoint (seed 5) per pytest run, for every test that needs
    a model but not a trained one."""
    from essen_ros.model.checkpoint import make_checkpoint

    return make_checkpoint(tmp_path_factory.getbasetemp() / "essen-tiny-checkpoint", "tiny", seed=5)


@pytest.fixture(scope="session")
def clevr_dev() -> Path:
    if not (CLEVR_DEV / "annotations.jsonl").is_file():
        pytest.fail(f"clevr-dev not found at {CLEVR_DEV} (set ESSEN_CLEVR_DEV)")
    return CLEVR_DEV


@pytest.fixture
def node():
    """An rclpy node in the test process, in the test run's DDS domain."""
    import rclpy

    rclpy.init()
    n = rclpy.create_node("essen_test_client")
    yield n
    n.destroy_node()
    rclpy.try_shutdown()
