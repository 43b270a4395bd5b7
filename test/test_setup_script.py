"""setup.sh refuses bad machines with one clear line, before installing anything."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOLS = ["bash", "dirname", "cat", "sha256sum", "cut", "awk", "mkdir", "printf", "grep", "sed",
         "nproc", "rm", "env", "readlink", "uname"]


def fake_bin(tmp_path: Path, drop=(), extra: dict[str, str] | None = None) -> Path:
    """A PATH folder with the real tools setup.sh uses, minus `drop`, plus fake scripts."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS + ["python3", "cmake", "cc", "gcc", "c++", "g++", "df"]:
        # the real interpreter, not a pyenv shim that needs the rest of PATH
        real = os.path.realpath(sys.executable) if tool == "python3" else shutil.which(tool)
        if real and tool not in drop:
            (bin_dir / tool).symlink_to(real)
    for name, body in (extra or {}).items():
        path = bin_dir / name
        if path.exists() or path.is_symlink():
            path.unlink()
        path.write_text("#!/bin/bash\n" + body + "\n")
        path.chmod(0o755)
    return bin_dir


def run_setup(tmp_path: Path, bin_dir: Path, **env_extra) -> subprocess.CompletedProcess:
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "ESSEN_VENV": str(tmp_path / "venv"), **env_extra}
    return subprocess.run(["bash", str(REPO / "setup.sh")], env=env, capture_output=True, text=True, timeout=60)


def test_old_python_is_refused_with_the_version_and_what_to_set(tmp_path):
    bin_dir = fake_bin(tmp_path, drop=("python3",), extra={
        "python3": 'if [ "$1" = "-c" ]; then echo 3.9.2; exit 0; fi; exit 1'})
    r = run_setup(tmp_path, bin_dir)
    assert r.returncode != 0
    assert "Python 3.11 or newer is needed" in r.stderr and "PYTHON=" in r.stderr
    assert not (tmp_path / "venv").exists()


def test_missing_python_is_named(tmp_path):
    r = run_setup(tmp_path, fake_bin(tmp_path), PYTHON="python3.99")
    assert r.returncode != 0 and "no 'python3.99' found" in r.stderr


def test_missing_cmake_says_what_to_install(tmp_path):
    r = run_setup(tmp_path, fake_bin(tmp_path, drop=("cmake",)))
    assert r.returncode != 0 and "cmake not found" in r.stderr and "apt-get install cmake" in r.stderr
    assert "CMake Error" not in r.stderr + r.stdout


def test_missing_compiler_says_what_to_install(tmp_path):
    r = run_setup(tmp_path, fake_bin(tmp_path, drop=("cc", "gcc", "c++", "g++")))
    assert r.returncode != 0 and "no C compiler" in r.stderr and "build-essential" in r.stderr


def test_too_little_disk_for_torch_is_refused_before_creating_the_venv(tmp_path):
    # df reporting 500 MB free where the venv would go
    bin_dir = fake_bin(tmp_path, drop=("df",), extra={
        "df": 'echo "Filesystem 1024-blocks Used Available Capacity Mounted"; echo "/dev/x 1000000 500000 512000 50% /"'})
    r = run_setup(tmp_path, bin_dir)
    assert r.returncode != 0 and "not enough disk space" in r.stderr and "500 MB free" in r.stderr
    assert not (tmp_path / "venv").exists()


def test_second_run_with_nothing_changed_skips_every_step():
    r = subprocess.run(["bash", str(REPO / "setup.sh")], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "ESSEN_VENV": os.environ.get("ESSEN_VENV", str(REPO / ".venv"))})
    assert r.returncode == 0, r.stderr
    for step in ("python dependencies up to date", "ROS interfaces up to date", "essen_ros package up to date"):
        assert step in r.stdout
