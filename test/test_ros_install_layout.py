"""The colcon / ament route for robots that have ROS 2: the same CMakeLists.txt, with the
Python sources installed next to the generated interfaces. Built here with plain CMake (what
colcon runs for an ament_cmake package) against the venv's ROS, into a temporary prefix."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = Path(sys.prefix)


def test_ament_install_has_interfaces_python_sources_launch_config_and_ros2_run_scripts(tmp_path):
    src = tmp_path / "src" / "essen_ros"
    for name in ("msg", "srv", "essen_ros", "launch", "config", "scripts", "sim"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("CMakeLists.txt", "package.xml"):
        shutil.copy(REPO / name, src / name)
    prefix = tmp_path / "install"
    env = {**os.environ, "AMENT_PREFIX_PATH": str(VENV), "CMAKE_PREFIX_PATH": str(VENV),
           "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    for cmd in (["cmake", "-S", str(src), "-B", str(tmp_path / "build"), f"-DCMAKE_INSTALL_PREFIX={prefix}",
                 "-DBUILD_TESTING=OFF", f"-DPython3_EXECUTABLE={sys.executable}"],
                ["cmake", "--build", str(tmp_path / "build"), "-j2"],
                ["cmake", "--install", str(tmp_path / "build")]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    share = prefix / "share" / "essen_ros"
    assert (share / "launch" / "essen.launch.py").is_file()
    assert (share / "config" / "essen.yaml").is_file() and (share / "config" / "fastdds.xml").is_file()
    assert (share / "launch" / "sim.launch.py").is_file() and (share / "sim" / "essen_world.sdf").is_file()
    for script in ("essen_node", "essen_sim", "essen_eval", "essen_scorer"):
        assert os.access(prefix / "lib" / "essen_ros" / script, os.X_OK)
    site = next(prefix.glob("lib/python3*/site-packages"))
    assert (site / "essen_ros" / "model").is_dir() and (site / "essen_ros" / "msg").is_dir()

    # Import from the install space alone (not the checkout): sources and messages together.
    probe = ("import sys, essen_ros; from essen_ros.msg import Grounding; from essen_ros.srv import Query; "
             "import essen_ros.paths as p; print(essen_ros.__file__); print(p.share_dir())")
    run_env = {**env, "PYTHONPATH": str(site), "AMENT_PREFIX_PATH": f"{prefix}{os.pathsep}{VENV}",
               "LD_LIBRARY_PATH": f"{prefix / 'lib'}{os.pathsep}{os.environ.get('LD_LIBRARY_PATH', '')}"}
    r = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {probe}"],
                       env=run_env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    module_file, share_dir = r.stdout.split()
    assert module_file.startswith(str(site)) and share_dir == str(share)
