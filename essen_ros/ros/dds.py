"""DDS settings the package applies to the processes it starts."""
from __future__ import annotations

import os

from essen_ros.paths import fastdds_profile


def apply_default_profile(env: dict | None = None) -> dict:
    """Point Fast DDS at the shipped profile (large shared-memory segment for images)
    unless the user chose a profile or transports already. Must run before rclpy.init().
    With ``env`` given, updates and returns that mapping instead of os.environ."""
    target = os.environ if env is None else env
    if "FASTDDS_DEFAULT_PROFILES_FILE" not in target and "FASTDDS_BUILTIN_TRANSPORTS" not in target:
        profile = fastdds_profile()
        if profile.is_file():
            target["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
    return target
