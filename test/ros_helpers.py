"""Small helpers for tests that talk to nodes over DDS from the test process."""
from __future__ import annotations

import time

import rclpy


def spin_until(node, done, timeout):
    """Spin `node` until `done()` is true or `timeout` seconds pass; returns done()."""
    end = time.monotonic() + timeout
    while not done() and time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    return done()
