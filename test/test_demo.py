"""essen-demo, the README's main job: scenes -> bag -> live replay through a real node
process over DDS -> per-item lines, scores and a report. Tiny random model for speed."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.ros


def run_demo(args, ros_env, timeout=300):
    return subprocess.run([sys.executable, "-m", "essen_ros.demo", *args], env=ros_env,
                          capture_output=True, text=True, timeout=timeout)


def test_demo_prints_a_line_per_text_scores_and_writes_the_report(tmp_path, tiny_checkpoint, ros_env):
    r = run_demo(["--model", str(tiny_checkpoint), "--images", "2", "--seed", "7", "--out", str(tmp_path)], ros_env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    lines = [line for line in r.stdout.splitlines() if re.match(r"^\[(ok  |WRONG|MISS)\] ", line)]
    # 2 scenes x (3 commands + 3 questions), every one answered by the node over DDS
    assert len(lines) == 12 and not any(line.startswith("[MISS]") for line in lines)
    assert "grounding (6):" in r.stdout and "VQA (6):" in r.stdout
    for name in ("results.json", "summary.md"):
        assert (tmp_path / "live" / name).is_file()


def test_demo_on_clevr_folder_replays_a_few_frames_and_scores_every_item_offline(tmp_path, tiny_checkpoint, ros_env, clevr_dev):
    r = run_demo(["--model", str(tiny_checkpoint), "--clevr", str(clevr_dev), "--frames", "3", "--seed", "1",
                  "--out", str(tmp_path)], ros_env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "items scored: 2501" in r.stdout
    assert (tmp_path / "offline" / "results.json").is_file() and (tmp_path / "live" / "summary.md").is_file()


def test_demo_names_a_missing_model_and_a_missing_folder(tmp_path, ros_env, tiny_checkpoint):
    r = run_demo(["--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], ros_env)
    assert r.returncode == 2 and "no model at" in r.stderr and str(tmp_path / "nope") in r.stderr
    r = run_demo(["--model", str(tiny_checkpoint), "--clevr", str(tmp_path / "absent"), "--out", str(tmp_path / "o")], ros_env)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
