"""The README's first command: `python launch.py` runs the demo end to end on the real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_launch_runs_the_tiny_demo(tmp_path):
  result = subprocess.run([sys.executable, str(REPO / "launch.py"), "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert "5 items, 0 skipped" in out and "(5, 48, 64)" in out  # images and the clip, bucketed
  assert "t= 950.0 -> high-noise expert" in out and "t= 300.0 -> low-noise expert" in out
  assert "nan" not in out.lower()
  assert sorted(p.name for p in (tmp_path / "data" / "media").iterdir())[:2] == ["ball0.png",
                                                                                   "ball0.txt"]


def test_launch_refuses_what_it_cannot_run_yet(tmp_path):
  result = subprocess.run([sys.executable, str(REPO / "launch.py"), "--config", "t2v_a14b",
                           "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
  assert result.returncode == 2 and "tiny demo" in result.stderr
