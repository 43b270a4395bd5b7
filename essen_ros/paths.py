"""Where the package's shipped files live, in a source checkout or a ROS install."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_ROOT = PACKAGE_DIR.parent


def share_dir() -> Path:
    """Folder holding config/, launch/ and models/: the repository root in a checkout
    (or editable install), else the ament share directory of an installed package."""
    if (_REPO_ROOT / "config").is_dir() and (_REPO_ROOT / "package.xml").is_file():
        return _REPO_ROOT
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("essen_ros"))
    except Exception:  # noqa: BLE001 - ament index absent or package not installed there
        return _REPO_ROOT


def config_path(name: str) -> Path:
    return share_dir() / "config" / name


def default_checkpoint() -> Path:
    """The shipped default model; ESSEN_MODEL overrides it."""
    env = os.environ.get("ESSEN_MODEL")
    if env:
        return Path(env)
    return share_dir() / "models" / "essen-default"


def fastdds_profile() -> Path:
    return config_path("fastdds.xml")
