"""The console entry points' guard: a Ctrl-C while the tool's module is still importing
(torch, rclpy: seconds on a robot's CPU) exits with 130 and one line, not a traceback."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from essen_ros import cli


def test_interrupt_during_import_exits_130_with_one_line(tmp_path):
    (tmp_path / "slow_tool.py").write_text("raise KeyboardInterrupt  # Ctrl-C mid-import\n")
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from essen_ros.cli import run
        sys.exit(run("slow_tool", "essen-slow"))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == cli.EXIT_INTERRUPTED
    assert done.stderr.strip() == "essen-slow: interrupted"
    assert "Traceback" not in done.stdout + done.stderr


def test_entry_points_return_the_tools_exit_code(tmp_path, monkeypatch):
    (tmp_path / "fine_tool.py").write_text("def main():\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.run("fine_tool", "essen-fine") == 3


def test_every_console_script_names_a_guarded_entry_point():
    from pathlib import Path

    setup = (Path(__file__).resolve().parent.parent / "setup.py").read_text()
    scripts = [line.strip().strip('",') for line in setup.splitlines() if " = essen_ros." in line]
    assert len(scripts) == 8
    for entry in scripts:
        name, target = (part.strip() for part in entry.split("="))
        module, function = target.split(":")
        assert module == "essen_ros.cli", entry
        assert callable(getattr(cli, function)), entry
