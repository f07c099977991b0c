"""Every model wan-jax trains, one entry each: what `model.arch` names.

A variant says which task it trains, which transformer, VAE and text encoder sizes it has (and
so its latent geometry), its experts and where they switch, how previews sample by default, the
ModelSpec id of the files it exports, its config file and the ai-toolkit arch names that map
onto it. Everything else asks the variant instead of restating a number; the tiny variants (the
CPU demos and the tests) sit beside their real ones.

A new variant of an existing family is one entry here plus its genuinely new code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from wan_jax.model.config import WanConfig, i2v_a14b, t2v_a14b, ti2v_5b, tiny, tiny_i2v, tiny_ti2v
from wan_jax.model.flow_matching import HIGH, I2V_BOUNDARY, LOW, T2V_BOUNDARY
from wan_jax.model.latent_geometry import LatentGeometry
from wan_jax.model.umt5 import UMT5Config, umt5_tiny, umt5_xxl
from wan_jax.model.vae_config import VAEConfig, tiny_vae, tiny_vae22, wan21_vae, wan22_vae
from wan_jax.tasks import TASKS, Task

TWO_EXPERTS = {HIGH: "high_noise", LOW: "low_noise"}  # slot -> name in checkpoints and files
ONE_MODEL = {HIGH: "transformer"}  # one model for every timestep, in the first slot


@dataclasses.dataclass(frozen=True)
class PreviewDefaults:
  """How upstream samples the release (its generate config), the previews' defaults."""

  shift: float
  guidance: tuple[float, float]  # (low noise, high noise), upstream's order
  steps: int = 40
  fps: int = 16


@dataclasses.dataclass(frozen=True)
class Variant:
  arch: str  # model.arch
  title: str  # for messages: "Wan 2.2 T2V-A14B"
  task: str  # a key of wan_jax.tasks.TASKS
  transformer: Callable[..., WanConfig]  # the expert's sizes (random or tiny weights)
  vae: Callable[..., VAEConfig]
  text_encoder: Callable[..., UMT5Config]
  experts: Mapping[str, str]  # slot ("high", "low") -> its name in checkpoints and files
  boundary: float  # t >= boundary * 1000 runs the "high" slot (0: one expert for every t)
  preview: PreviewDefaults
  modelspec: str  # the ModelSpec id of the base model in exported files
  config_file: str  # configs/<file>[:tiny]
  ai_toolkit: tuple[str, ...] = ()  # ai-toolkit `arch:` names that map onto this variant
  release: str = ""  # the Hugging Face release ("" for the tiny demos)
  tiny: bool = False  # random tiny weights built on the host: the CPU demos and the tests
  demo_workdir: str = ""  # launch.py's default --workdir (the tiny demos only)

  @property
  def task_object(self) -> Task:
    return TASKS[self.task]

  @property
  def geometry(self) -> LatentGeometry:
    return LatentGeometry.of(self.vae(), self.transformer().patch_size)

  @property
  def single_expert(self) -> bool:
    return len(self.experts) == 1

  def expert_name(self, slot: str) -> str:
    """The name an expert slot has in checkpoints, file names and metrics."""
    if slot not in self.experts:
      raise ValueError(f"{self.title} has no {slot!r} expert (it has {tuple(self.experts)})")
    return self.experts[slot]

  def file_suffix(self, slot: str) -> str:
    """What an exported file's name adds for the expert: "_high_noise", or nothing when the
    model has one."""
    return "" if self.single_expert else "_" + self.expert_name(slot)


A14B_T2V_PREVIEW = PreviewDefaults(shift=12.0, guidance=(3.0, 4.0))  # wan_t2v_A14B.py
A14B_I2V_PREVIEW = PreviewDefaults(shift=5.0, guidance=(3.5, 3.5))  # wan_i2v_A14B.py
TI2V_5B_PREVIEW = PreviewDefaults(shift=5.0, guidance=(5.0, 5.0), steps=50, fps=24)  # wan_ti2v_5B

_ENTRIES = (
    Variant("wan22_t2v_a14b", "Wan 2.2 T2V-A14B", "t2v", t2v_a14b, wan21_vae, umt5_xxl,
            TWO_EXPERTS, T2V_BOUNDARY, A14B_T2V_PREVIEW, "wan-2.2-t2v-a14b",
            "configs/wan22_masked.py", ("wan22_14b", "wan22_t2v_a14b"),
            release="Wan-AI/Wan2.2-T2V-A14B"),
    Variant("wan22_i2v_a14b", "Wan 2.2 I2V-A14B", "i2v", i2v_a14b, wan21_vae, umt5_xxl,
            TWO_EXPERTS, I2V_BOUNDARY, A14B_I2V_PREVIEW, "wan-2.2-i2v-a14b",
            "configs/wan22_i2v_masked.py", ("wan22_14b_i2v", "wan22_i2v_a14b"),
            release="Wan-AI/Wan2.2-I2V-A14B"),
    Variant("wan22_ti2v_5b", "Wan 2.2 TI2V-5B", "ti2v", ti2v_5b, wan22_vae, umt5_xxl, ONE_MODEL,
            0.0, TI2V_5B_PREVIEW, "wan-2.2-ti2v-5b", "configs/wan22_5b_masked.py",
            ("wan22_5b", "wan22_ti2v_5b"), release="Wan-AI/Wan2.2-TI2V-5B"),
    Variant("tiny", "the tiny T2V demo", "t2v", tiny, tiny_vae, umt5_tiny, TWO_EXPERTS,
            T2V_BOUNDARY, A14B_T2V_PREVIEW, "wan-2.2-t2v-tiny", "configs/wan22_masked.py:tiny",
            ("tiny",), tiny=True, demo_workdir="runs/demo"),
    Variant("tiny_i2v", "the tiny I2V demo", "i2v", tiny_i2v, tiny_vae, umt5_tiny, TWO_EXPERTS,
            I2V_BOUNDARY, A14B_I2V_PREVIEW, "wan-2.2-i2v-tiny",
            "configs/wan22_i2v_masked.py:tiny", ("tiny_i2v",), tiny=True,
            demo_workdir="runs/demo_i2v"),
    Variant("tiny_ti2v", "the tiny TI2V demo", "ti2v", tiny_ti2v, tiny_vae22, umt5_tiny, ONE_MODEL,
            0.0, TI2V_5B_PREVIEW, "wan-2.2-ti2v-tiny", "configs/wan22_5b_masked.py:tiny",
            ("tiny_ti2v",), tiny=True, demo_workdir="runs/demo_5b"),
)

VARIANTS: dict[str, Variant] = {v.arch: v for v in _ENTRIES}


def get_variant(arch: Any) -> Variant:
  """The variant `model.arch` names, or one line listing the known ones."""
  if arch not in VARIANTS:
    raise ValueError(f"model.arch must be one of {tuple(VARIANTS)}, got {arch!r}")
  return VARIANTS[arch]


def for_task(task: str) -> Variant:
  """The released (not tiny) variant that trains `task`: for "set model.arch=..." advice."""
  return next(v for v in _ENTRIES if v.task == task and not v.tiny)


def by_ai_toolkit(name: str) -> Variant | None:
  """The variant an ai-toolkit `arch:` value maps onto (None: not one wan-jax trains)."""
  return next((v for v in _ENTRIES if name in v.ai_toolkit), None)


def tiny_twin(variant: Variant) -> Variant:
  """The tiny variant of the same task: what a CPU run stands in with."""
  return variant if variant.tiny else next(v for v in _ENTRIES if v.tiny and v.task == variant.task)
