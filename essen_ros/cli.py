"""Console entry points (setup.py). Each imports its module inside a guard: torch and rclpy
take seconds to import on a robot's CPU, and a Ctrl-C in that window would otherwise end in
a KeyboardInterrupt traceback. It exits quietly with 130 instead, like a Ctrl-C later on."""
from __future__ import annotations

import importlib
import sys

EXIT_INTERRUPTED = 130


def run(module: str, prog: str) -> int:
    try:
        main = importlib.import_module(module).main
        return main()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def node() -> int:
    return run("essen_ros.ros.node", "essen-node")


def sim() -> int:
    return run("essen_ros.ros.sim", "essen-sim")


def scorer() -> int:
    return run("essen_ros.ros.scorer", "essen-scorer")


def train() -> int:
    return run("essen_ros.train", "essen-train")


def datagen() -> int:
    return run("essen_ros.datagen", "essen-datagen")


def evaluate() -> int:
    return run("essen_ros.evaluate", "essen-eval")


def bag() -> int:
    return run("essen_ros.bagtool", "essen-bag")


def demo() -> int:
    return run("essen_ros.demo", "essen-demo")
