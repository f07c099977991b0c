"""A loss curve as a PNG, drawn with pillow alone (no plotting library to install on a cluster).

Raw losses are drawn faint, an exponential moving average bold: diffusion losses are dominated
by the random timestep of each batch, so the trend only shows once smoothed. The curve is drawn at
twice the requested size and scaled down, which is pillow's cheapest anti-aliasing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from wan_jax.train.media_out import save_image

SUPERSAMPLE = 2
MARGIN = (64, 30, 16, 36)  # left, top, right, bottom, at 1x
BACKGROUND, AXIS, GRID = (255, 255, 255), (40, 40, 40), (228, 228, 228)
RAW, EMA = (160, 190, 235), (25, 70, 160)
MAX_DOTS = 400  # above this many points the raw series is a line, not dots


def _font(size: int) -> ImageFont.ImageFont:
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # pillow < 10.1 has only the fixed bitmap font
    return ImageFont.load_default()


def ema(values: np.ndarray, smoothing: float) -> np.ndarray:
  """Debiased EMA (as TensorBoard's smoothing): early values are not pulled toward zero."""
  out = np.empty(len(values))
  m, weight = 0.0, 0.0
  for i, v in enumerate(values.tolist()):
    m = smoothing * m + (1.0 - smoothing) * v
    weight = smoothing * weight + (1.0 - smoothing)
    out[i] = m / weight
  return out


def _nice_ticks(lo: float, hi: float, count: int = 5, min_step: float = 0.0) -> np.ndarray:
  """Ticks at 1, 2, 2.5 or 5 times a power of ten (and at least min_step apart), in [lo, hi]."""
  raw = max((hi - lo) / count, min_step)
  mag = 10.0 ** math.floor(math.log10(raw))
  step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
  start = math.ceil(lo / step - 1e-9) * step
  ticks = np.arange(start, hi + step * 1e-6, step)
  return ticks[(ticks >= lo - step * 1e-6) & (ticks <= hi + step * 1e-6)]


def _label(v: float, step: float) -> str:
  if v == 0 or 1e-3 <= abs(v) < 1e5:
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if round(step * 10 ** decimals, 6) % 1:  # a step of 2.5 x 10^k needs one digit more
      decimals += 1
    return f"{v:.{min(decimals, 6)}f}"
  return f"{v:.3g}"


def _pad_range(lo: float, hi: float, frac: float = 0.05) -> tuple[float, float]:
  if hi - lo <= 1e-12 * max(1.0, abs(hi)):
    half = 0.1 * abs(hi) or 1.0
    return lo - half, hi + half
  pad = (hi - lo) * frac
  return lo - pad, hi + pad


def _y_ticks(lo: float, hi: float, log_y: bool) -> list[tuple[float, str]]:
  """(position in plotted units, label); in log mode positions are log10 of the value."""
  if not log_y:
    ticks = _nice_ticks(lo, hi)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else hi - lo
    return [(t, _label(t, step)) for t in ticks]
  decades = range(math.floor(lo) - 1, math.ceil(hi) + 1)
  for mantissas in ((1,), (1, 2, 5)):  # decades if the range spans a few, else 1-2-5
    ticks = [math.log10(m) + d for d in decades for m in mantissas]
    ticks = [t for t in ticks if lo <= t <= hi]
    if len(ticks) >= 3:
      return [(t, f"{10 ** t:.3g}") for t in ticks]
  ticks = _nice_ticks(10 ** lo, 10 ** hi)
  step = ticks[1] - ticks[0] if len(ticks) > 1 else 10 ** hi - 10 ** lo
  return [(math.log10(t), _label(t, step)) for t in ticks if t > 0]


class Series(NamedTuple):
  """What gets drawn: sorted steps, plotted values (log10 in log mode), their EMA, title notes."""
  x_N: np.ndarray
  y_N: np.ndarray
  smooth_N: np.ndarray
  notes: list[str]


def prepare(steps_N: np.ndarray, losses_N: np.ndarray, log_y: bool, smoothing: float) -> Series:
  """Drops the points that cannot be drawn (counting them), sorts by step, smooths."""
  finite = np.isfinite(steps_N) & np.isfinite(losses_N)
  notes = []
  if (~finite).sum():
    notes.append(f"{(~finite).sum()} non-finite skipped")
  keep = finite
  if log_y:
    keep = finite & (losses_N > 0)
    if (finite & ~keep).sum():
      notes.append(f"{(finite & ~keep).sum()} non-positive skipped")
  order = np.argsort(steps_N[keep], kind="stable")
  x_N, y_N = steps_N[keep][order], losses_N[keep][order]
  if log_y:
    y_N = np.log10(y_N)
  smooth_N = ema(y_N, smoothing)
  if len(y_N):
    last = 10 ** smooth_N[-1] if log_y else smooth_N[-1]
    notes.insert(0, f"ema {last:.4g} at step {x_N[-1]:.0f}")
  return Series(x_N, y_N, smooth_N, notes)


class _Frame(NamedTuple):
  """The plot area in pixels and the data range it shows."""
  box: tuple[float, float, float, float]  # x0, y0, x1, y1
  xlim: tuple[float, float]
  ylim: tuple[float, float]

  def px(self, v: float) -> float:
    x0, _, x1, _ = self.box
    return x0 + (v - self.xlim[0]) / (self.xlim[1] - self.xlim[0]) * (x1 - x0)

  def py(self, v: float) -> float:
    _, y0, _, y1 = self.box
    return y1 - (v - self.ylim[0]) / (self.ylim[1] - self.ylim[0]) * (y1 - y0)


def _frame(series: Series, width: int, height: int, log_y: bool) -> _Frame:
  left, top, right, bottom = (m * SUPERSAMPLE for m in MARGIN)
  box = (left, top, width * SUPERSAMPLE - right, height * SUPERSAMPLE - bottom)
  if not len(series.y_N):
    return _Frame(box, (0.0, 1.0), (-1.0, 0.0) if log_y else (0.0, 1.0))
  both = np.concatenate([series.y_N, series.smooth_N])
  return _Frame(box, _pad_range(float(series.x_N.min()), float(series.x_N.max()), 0.0),
                _pad_range(float(both.min()), float(both.max())))


def _draw_axes(draw: ImageDraw.ImageDraw, frame: _Frame, log_y: bool, height: int) -> None:
  s = SUPERSAMPLE
  font = _font(11 * s)
  x0, y0, x1, y1 = frame.box
  x_ticks = _nice_ticks(*frame.xlim, min_step=1.0)  # steps are whole numbers
  x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else frame.xlim[1] - frame.xlim[0]
  for t in x_ticks:
    draw.line([(frame.px(t), y0), (frame.px(t), y1)], fill=GRID, width=s)
    draw.text((frame.px(t), y1 + 4 * s), _label(t, x_step), fill=AXIS, font=font, anchor="mt")
  for t, text in _y_ticks(*frame.ylim, log_y):
    draw.line([(x0, frame.py(t)), (x1, frame.py(t))], fill=GRID, width=s)
    draw.text((x0 - 4 * s, frame.py(t)), text, fill=AXIS, font=font, anchor="rm")
  draw.rectangle([x0, y0, x1, y1], outline=AXIS, width=s)
  draw.text(((x0 + x1) / 2, height * s - 2 * s), "step", fill=AXIS, font=font, anchor="mb")


def _draw_series(draw: ImageDraw.ImageDraw, frame: _Frame, series: Series) -> None:
  s = SUPERSAMPLE
  x0, y0, x1, y1 = frame.box
  if not len(series.y_N):
    draw.text(((x0 + x1) / 2, (y0 + y1) / 2), "no data", fill=AXIS, font=_font(13 * s),
              anchor="mm")
    return
  xs = [frame.px(v) for v in series.x_N.tolist()]
  raw = list(zip(xs, (frame.py(v) for v in series.y_N.tolist())))
  if len(raw) <= MAX_DOTS:
    r = 1.5 * s
    for a, b in raw:
      draw.ellipse([a - r, b - r, a + r, b + r], fill=RAW)
  smooth = list(zip(xs, (frame.py(v) for v in series.smooth_N.tolist())))
  if len(raw) > 1:
    draw.line(raw, fill=RAW, width=s)
    draw.line(smooth, fill=EMA, width=2 * s, joint="curve")
  else:
    (a, b), r = smooth[0], 3 * s
    draw.ellipse([a - r, b - r, a + r, b + r], fill=EMA)


def save_loss_plot(steps: Sequence[int], losses: Sequence[float], path: Path, *,
                   title: str = "loss", log_y: bool = False, size: tuple[int, int] = (800, 450),
                   smoothing: float = 0.98) -> Path:
  """Writes a PNG of losses against steps (atomically) and returns its path.

  Non-finite points (and, with log_y, non-positive ones) are left out and counted in the title.
  size is (width, height) in pixels; smoothing is the EMA's decay per point, in [0, 1).
  """
  steps_N = np.asarray(steps, np.float64).reshape(-1)
  losses_N = np.asarray(losses, np.float64).reshape(-1)
  if steps_N.shape != losses_N.shape:
    raise ValueError(f"{len(steps_N)} steps but {len(losses_N)} losses")
  width, height = size
  if width < 160 or height < 100:
    raise ValueError(f"size must be at least 160x100, got {width}x{height}")
  if not 0.0 <= smoothing < 1.0:
    raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")

  series = prepare(steps_N, losses_N, log_y, smoothing)
  s = SUPERSAMPLE
  image = Image.new("RGB", (width * s, height * s), BACKGROUND)
  draw = ImageDraw.Draw(image)
  frame = _frame(series, width, height, log_y)
  heading = title + (f"  ({', '.join(series.notes)})" if series.notes else "")
  draw.text((frame.box[0], frame.box[1] // 2), heading, fill=AXIS, font=_font(13 * s),
            anchor="lm")
  _draw_axes(draw, frame, log_y, height)
  _draw_series(draw, frame, series)
  return save_image(image.resize((width, height), Image.Resampling.LANCZOS), path)
