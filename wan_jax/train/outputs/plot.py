"""loss.png: the loss curves of the run, one panel per trained expert, drawn with matplotlib.

The two experts see different noise levels and their losses differ in scale, so each gets its
own panel (and y-axis). Raw losses are faint points and the moving average (the dashboards'
`loss_avg`, the mean of the expert's last 20 applied steps) a bold line: a diffusion loss is
dominated by each batch's random timestep, so the trend shows only once averaged. The learning
rate is on the right-hand axis; skipped steps (non-finite loss or gradients) are red marks at
the bottom. Drawn with the Agg canvas directly, no pyplot: no display, no global figure state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wan_jax.files import atomic_path
from wan_jax.train.outputs.trackers import (
  AVERAGE_WINDOW,
  ExpertScalars,
  applied,
  expert_label,
  latest_rows,
)
from wan_jax.variants import TWO_EXPERTS

EXPERT_ORDER = ("high_noise", "low_noise")
RAW, AVERAGE, LR, SKIPPED = "#7aa6e0", "#17468f", "#888888", "#d62728"


def _experts(rows: list[dict[str, Any]], experts: Mapping[str, str]) -> list[str]:
  names = {expert_label(str(r.get("expert", "all")), experts) for r in rows}
  return sorted(names, key=lambda n: (EXPERT_ORDER.index(n) if n in EXPERT_ORDER else 2, n))


def _panel(ax: Axes, name: str, rows: list[dict[str, Any]], window: int,
           experts: Mapping[str, str]) -> None:
  scalars = ExpertScalars(window, experts)
  steps, losses, averages, skipped, lr_steps, lrs = [], [], [], [], [], []
  for row in rows:
    values = scalars(row)
    if applied(row):
      steps.append(row["step"])
      losses.append(values[f"loss/{name}"])
      averages.append(values[f"loss_avg/{name}"])
    else:
      skipped.append(row["step"])
    if f"lr/{name}" in values:
      lr_steps.append(row["step"])
      lrs.append(values[f"lr/{name}"])
  ax.scatter(steps, losses, s=16 if len(steps) < 300 else 7, color=RAW, alpha=0.6,
             linewidths=0, label="loss")
  ax.plot(steps, averages, color=AVERAGE, linewidth=2.2,
          label=f"mean of last {window}")
  if skipped:
    ax.plot(skipped, [0.0] * len(skipped), linestyle="none", marker="x", color=SKIPPED,
            markersize=7, transform=ax.get_xaxis_transform(), clip_on=False,
            label=f"skipped ({len(skipped)})")
  title = f"{name.replace('_', '-')} expert"
  if averages:
    title += f": mean {averages[-1]:.4g} at step {steps[-1]}"
  elif not steps:
    title += ": no applied step yet"
  ax.set_title(title, loc="left", fontsize=10)
  ax.set_ylabel("loss")
  ax.grid(True, color="#e4e4e4", linewidth=0.8)
  handles, labels = ax.get_legend_handles_labels()
  if lrs:
    top = max(lrs)
    power = math.floor(math.log10(top)) if top > 0 else 0  # the scale goes in the label
    lr_ax = ax.twinx()
    lr_ax.plot(lr_steps, [v / 10**power for v in lrs], color=LR, linewidth=1.0, linestyle="--",
               label="learning rate")
    lr_ax.set_ylabel(f"learning rate (x1e{power})" if power else "learning rate", color=LR)
    lr_ax.tick_params(axis="y", colors=LR)
    lr_ax.set_ylim(bottom=0.0, top=(top / 10**power) * 1.1 if top > 0 else 1.0)
    more = lr_ax.get_legend_handles_labels()
    handles, labels = handles + more[0], labels + more[1]
  if handles:
    ax.legend(handles, labels, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=len(handles),
              fontsize=8, frameon=False, borderaxespad=0.1, handletextpad=0.3)


def loss_figure(rows: Iterable[dict[str, Any]], *, window: int = AVERAGE_WINDOW,
                width: float = 9.0, panel_height: float = 3.2,
                experts: Mapping[str, str] = TWO_EXPERTS) -> tuple[Figure, dict[str, Axes]]:
  """The figure and its loss axis per expert ("high_noise", "low_noise"; `experts` names them),
  from metrics rows (step, loss, lr, expert, skipped; a step written twice counts once, the
  last)."""
  rows = latest_rows(rows)
  names = _experts(rows, experts) or ["loss"]
  fig = Figure(figsize=(width, panel_height * len(names) + 0.4), layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(len(names), 1, squeeze=False, sharex=True)[:, 0]
  panels = {}
  for ax, name in zip(axes, names):
    panel_rows = [r for r in rows if expert_label(str(r.get("expert", "all")), experts) == name]
    _panel(ax, name, panel_rows, window, experts)
    panels[name] = ax
  axes[-1].set_xlabel("step")
  if not rows:
    axes[0].text(0.5, 0.5, "no steps logged yet", ha="center", va="center",
                 transform=axes[0].transAxes)
  return fig, panels


def save_loss_plot(rows: Iterable[dict[str, Any]], path: Path, *, dpi: int = 100,
                   experts: Mapping[str, str] = TWO_EXPERTS) -> Path:
  """Writes loss.png from metrics rows, atomically, and returns its path."""
  fig, _ = loss_figure(rows, experts=experts)
  with atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=dpi)
  return Path(path)
