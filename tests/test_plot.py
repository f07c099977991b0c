"""loss.png: one panel per trained expert (checked on the matplotlib figure, not its pixels), raw
points and their moving average, the learning rate on a second axis, skipped steps marked."""

from __future__ import annotations

import numpy as np
from PIL import Image

from wan_jax.train.outputs.plot import loss_figure, save_loss_plot


def row(step: int, expert: str, loss: float, skipped: bool = False) -> dict:
  return {"step": step, "loss": loss, "lr": 1e-4 * min(1.0, step / 4), "expert": expert,
          "skipped": skipped}


def two_experts(n: int = 24, every: int = 4) -> list[dict]:
  rng = np.random.default_rng(0)
  rows = []
  for step in range(1, n + 1):
    expert = "high" if (step - 1) // every % 2 == 0 else "low"
    scale = 0.4 if expert == "high" else 0.05  # the experts' losses differ in scale
    rows.append(row(step, expert, float(scale * (1 + 0.3 * rng.standard_normal()))))
  rows[9] = row(10, "high", float("nan"), skipped=True)
  return rows


def test_the_plot_has_one_loss_axis_per_expert_with_its_own_steps_lr_and_skips():
  rows = two_experts()
  rows += [row(3, "high", 9.0)] + [row(3, "high", rows[2]["loss"])]  # a resume wrote step 3 again
  fig, panels = loss_figure(rows)
  assert list(panels) == ["high_noise", "low_noise"]
  assert [ax for ax in fig.axes if ax.get_ylabel() == "loss"] == list(panels.values())
  for name, ax in panels.items():
    mine = [r for r in two_experts() if r["expert"] == name.split("_")[0]]
    applied = [r["step"] for r in mine if not r["skipped"]]
    points = ax.collections[0].get_offsets()
    np.testing.assert_array_equal(points[:, 0], applied)  # only this expert's steps, once each
    average = next(line for line in ax.get_lines() if line.get_label().startswith("mean"))
    assert average.get_linewidth() > 2 and list(average.get_xdata()) == applied
    assert ax.collections[0].get_alpha() < 1  # raw points faint, the average bold
    twin, = [a for a in fig.axes if a is not ax and a.get_ylabel().startswith("learning rate")
             and a.bbox.bounds == ax.bbox.bounds]
    assert len(twin.get_lines()[0].get_xdata()) == len(mine)
  skipped = [line for line in panels["high_noise"].get_lines()
             if line.get_label().startswith("skipped")]
  assert list(skipped[0].get_xdata()) == [10]
  assert not any(line.get_label().startswith("skipped") for line in panels["low_noise"].get_lines())


def test_one_trained_expert_is_one_panel_and_the_png_is_written_atomically(tmp_path):
  rows = [r for r in two_experts() if r["expert"] == "low"]
  fig, panels = loss_figure(rows)
  assert list(panels) == ["low_noise"]
  path = save_loss_plot(rows, tmp_path / "loss.png")
  with Image.open(path) as im:
    assert im.format == "PNG" and im.size[0] > 500
  assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]
  save_loss_plot([], tmp_path / "empty.png")  # before the first logged step
