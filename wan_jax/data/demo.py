"""The built-in demo data set, generated on first use: a few images, a short clip, masks and
captions, small enough for a CPU run, with the odd file real data sets have (an image without a
caption file, a mask at another resolution)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from wan_jax import video
from wan_jax.files import atomic_path, build_folder_once

SIZE = (96, 64)  # width, height


def _scene(rng: np.random.Generator, shift: int = 0) -> tuple[Image.Image, Image.Image]:
  """A gradient background with a coloured disc (the subject) and the disc's mask."""
  w, h = SIZE
  x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
  y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
  tint = rng.uniform(0.3, 1.0, 3).astype(np.float32)
  background = ((0.5 * x + 0.5 * y) * tint).astype(np.uint8).repeat(1, axis=2)
  image = Image.fromarray(np.broadcast_to(background, (h, w, 3)).copy())
  mask = Image.new("L", SIZE, 0)
  cx, cy, r = 30 + shift, 32, 18
  colour = tuple(int(c) for c in rng.integers(0, 255, 3))
  ImageDraw.Draw(image).ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
  ImageDraw.Draw(mask).ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
  return image, mask


def make_demo_dataset(root: str | Path) -> tuple[Path, Path]:
  """(media folder, mask folder) under `root`, created if missing; returns existing ones as is.

  Generated into a temporary folder renamed onto `root` when complete: an interrupted generation
  is redone on the next run, never trained on with an item missing.
  """
  root = build_folder_once(root, _write_demo_dataset)
  return root / "media", root / "masks"


def _write_demo_dataset(root: Path) -> None:
  media, masks = root / "media", root / "masks"
  media.mkdir()
  masks.mkdir()
  rng = np.random.default_rng(0)
  for i in range(4):
    image, mask = _scene(rng)
    image.save(media / f"ball{i}.png")
    if i == 3:  # a mask at half resolution: same aspect, resized by the loader
      mask = mask.resize((SIZE[0] // 2, SIZE[1] // 2))
    mask.save(masks / f"ball{i}.png")
    if i != 2:  # ball2 has no caption file: default_caption applies
      (media / f"ball{i}.txt").write_text(f"a coloured ball, photo {i}")
  frames, frame_masks = zip(*(_scene(np.random.default_rng(7), shift=3 * t) for t in range(9)))
  video.write(np.stack([np.asarray(f) for f in frames]), media / "rolling.mp4", fps=16,
              codec="libx264")
  (masks / "rolling").mkdir(exist_ok=True)
  for t, m in enumerate(frame_masks):
    m.save(masks / "rolling" / f"{t}.png")
  (media / "rolling.txt").write_text("a ball rolling to the right")


def make_clip_dataset(root: str | Path, width: int, height: int, frames: int,
                      clips: int = 2) -> tuple[Path, Path]:
  """(media folder, mask folder) of `clips` generated clips at a real training size (a disc
  moving over a gradient, its mask per frame as an MP4): what `model.random_weights` trains on
  when no folder is given. Reused as is when present (written whole or not at all, like the demo).
  """
  root = build_folder_once(Path(root) / f"clips_{width}x{height}x{frames}x{clips}",
                           lambda tmp: _write_clips(tmp, width, height, frames, clips))
  return root / "media", root / "masks"


def _write_clips(root: Path, width: int, height: int, frames: int, clips: int) -> None:
  media, masks = root / "media", root / "masks"
  media.mkdir()
  masks.mkdir()
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  r = min(width, height) / 5
  for c in range(clips):
    rng = np.random.default_rng(c)
    tint = rng.uniform(0.3, 1.0, 3).astype(np.float32)
    background = ((0.5 * xx / width + 0.5 * yy / height)[..., None] * 255 * tint)
    colour = rng.integers(0, 255, 3).astype(np.float32)
    clip, mask = [], []
    for t in range(frames):
      cx, cy = width * (0.25 + 0.5 * t / max(frames - 1, 1)), height / 2
      disc = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)[..., None]
      clip.append(np.where(disc, colour, background).astype(np.uint8))
      mask.append(np.repeat(disc.astype(np.uint8) * 255, 3, axis=2))
    video.write(np.stack(clip), media / f"clip{c}.mp4", fps=16, codec="libx264")
    video.write(np.stack(mask), masks / f"clip{c}.mp4", fps=16, codec="libx264")
    (media / f"clip{c}.txt").write_text("a coloured ball rolling to the right")


DEMO_CLIP_SIZE = (96, 64)  # width, height of the image-to-video demo's clips


def make_preview_image(root: str | Path, width: int, height: int) -> Path:
  """A still to animate in the image-to-video demo's previews: a disc at the left of a gradient,
  like the first frame of the demo clips. Written once (atomically) and reused."""
  path = Path(root) / f"preview_start_{width}x{height}.png"
  if not path.is_file():
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    background = (0.5 * xx / width + 0.5 * yy / height)[..., None] * 255 * np.float32([0.9, 0.8, 0.5])
    disc = ((xx - width * 0.25) ** 2 + (yy - height / 2) ** 2 < (min(width, height) / 5) ** 2)
    image = np.where(disc[..., None], np.float32([220, 40, 40]), background).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
      Image.fromarray(image).save(tmp, format="PNG")
  return path


DEMO_WORDS = ("a an the coloured ball photo rolling to right left red green blue small large on "
              "background moving").split()


def make_demo_tokenizer(folder: str | Path) -> Path:
  """A word-level tokenizer saved with transformers' own classes (<pad>=0, </s>=1, <unk>=2), so
  the demo runs the real tokenizer-loading path without downloading umT5's.

  The files are saved beside and moved in with tokenizer.json last: its presence means complete.
  """
  folder = Path(folder)
  if (folder / "tokenizer.json").is_file():
    return folder
  folder.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(prefix=".tokenizer.tmp-", dir=folder) as tmp:
    _write_demo_tokenizer(Path(tmp))
    for f in sorted(Path(tmp).iterdir(), key=lambda f: f.name == "tokenizer.json"):
      os.replace(f, folder / f.name)
  return folder


def _write_demo_tokenizer(folder: Path) -> None:
  from tokenizers import Tokenizer, models, pre_tokenizers, processors
  from transformers import PreTrainedTokenizerFast

  vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
  for word in DEMO_WORDS:
    vocab.setdefault(word, len(vocab))
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                               pre_tokenizers.Punctuation("removed")])
  tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                     special_tokens=[("</s>", 1)])
  PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                          unk_token="<unk>").save_pretrained(folder)
