"""Python packaging for essen_ros (console scripts). The ROS interfaces are built by CMake
(see setup.sh / CMakeLists.txt); this file only installs the Python package."""
from setuptools import find_packages, setup

setup(
    name="essen_ros",
    version="0.1.0",
    description="Compact two-tower vision-language perception (ESsEN) for ROS 2",
    packages=find_packages(include=["essen_ros", "essen_ros.*"]),
    python_requires=">=3.11",
    entry_points={
        "console_scripts": [
            "essen-node = essen_ros.cli:node",
            "essen-train = essen_ros.cli:train",
            "essen-datagen = essen_ros.cli:datagen",
            "essen-eval = essen_ros.cli:evaluate",
            "essen-bag = essen_ros.cli:bag",
            "essen-sim = essen_ros.cli:sim",
            "essen-scorer = essen_ros.cli:scorer",
            "essen-demo = essen_ros.cli:demo",
        ],
    },
)
