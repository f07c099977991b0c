"""The README's first command: `python launch.py` runs the tiny demo end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_launch_runs_the_tiny_demo():
  result = subprocess.run([sys.executable, str(REPO / "launch.py")], capture_output=True,
                          text=True, timeout=600, cwd=REPO)
  assert result.returncode == 0, result.stderr
  assert "t= 950.0 -> high-noise expert" in result.stdout
  assert "t= 300.0 -> low-noise expert" in result.stdout
  assert "nan" not in result.stdout.lower()


def test_launch_refuses_what_it_cannot_run_yet():
  result = subprocess.run([sys.executable, str(REPO / "launch.py"), "--config", "t2v_a14b"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
  assert result.returncode == 2 and "tiny demo" in result.stderr
