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
            "essen-node = essen_ros.ros.node:main",
            "essen-train = essen_ros.train:main",
            "essen-datagen = essen_ros.datagen:main",
            "essen-eval = essen_ros.evaluate:main",
            "essen-bag = essen_ros.bagtool:main",
            "essen-sim = essen_ros.ros.sim:main",
            "essen-scorer = essen_ros.ros.scorer:main",
            "essen-demo = essen_ros.demo:main",
        ],
    },
)
