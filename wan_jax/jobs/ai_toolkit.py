"""An ai-toolkit Wan 2.2 job file (YAML) as our ml-collections config.

Most people who train Wan 2.2 with masked loss keep their runs as ai-toolkit job files
(`job: extension`, `config.name`, `config.process[0]` with `network`, `save`, `datasets`, `train`,
`model`, `sample`). `load_job` takes such a file as it is: every key is mapped, or reported once as
not used with the reason (`ai_toolkit_keys`), and anything that would train something else
(another architecture, another optimizer, a second process) is refused with one line naming
the key path. `arch:` names a variant (wan_jax/variants.py): `wan22_14b` maps onto
configs/wan22_masked.py, `wan22_14b_i2v` (image-to-video) onto configs/wan22_i2v_masked.py and
`wan22_5b` (TI2V-5B; `do_i2v` sets ti2v.i2v_prob) onto configs/wan22_5b_masked.py, with each
sample's start image (`ctrl_img`, or `--ctrl_img` in its prompt) as `preview.images`. Keys the file
leaves out take ai-toolkit's defaults, not ours, because that is the run the file described (e.g.
`lr` 1e-6, `timestep_type` sigmoid, `switch_boundary_every` 1).

Reading the file (substitutions, bounds on hostile input) is job_file.py's; this module maps its
data. docs/from_ai_toolkit.md lists every key and what it becomes.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Callable

import ml_collections

from wan_jax.data.captions import PLACEHOLDERS, apply_trigger
from wan_jax.data.config import dataset_config
from wan_jax.jobs import ai_toolkit_keys
from wan_jax.jobs.job_file import is_job_file, read_job  # noqa: F401 (launch.py reads it here)
from wan_jax.jobs.values import JobError, Section
from wan_jax.tasks.i2v_images import ImageTraining, nearest_clip_frames
from wan_jax.variants import VARIANTS, Variant, by_ai_toolkit

PROCESS_TYPES = ("sd_trainer", "diffusion_trainer", "ui_trainer")
DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
          "half": "float16", "fp32": "float32", "float32": "float32", "float": "float32"}
ADAMW = ("adamw", "adamw8bit", "adamw8")  # torch / bitsandbytes AdamW: weight decay 0.01 default
ADAM = ("adam", "adam8bit", "adam8")  # Adam: no weight decay by default
TIMESTEPS = {"linear": "uniform", "sigmoid": "logit_normal", "shift": "shift"}
SCHEDULES = ("constant", "cosine", "constant_with_warmup")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
def _release_tag(variant: Variant) -> str:
  """What names a variant's release in a hub id: "Wan-AI/Wan2.2-TI2V-5B" -> "ti2v-5b"."""
  return variant.release.split("Wan2.2-", 1)[-1].lower()


# A variant's config file ("configs/wan22_masked.py:tiny") -> its get_config (launch.py's loader)
BaseConfig = Callable[[str], ml_collections.ConfigDict]


@dataclasses.dataclass
class Job:
  """A mapped job: the config, the default workdir and what the user should be told."""
  config: ml_collections.ConfigDict
  workdir: str  # training_folder/name, as ai-toolkit's output folder
  notices: list[str]
  unused: list[tuple[str, str]]  # (key path, reason)
  off: list[str]  # key paths of features that are off in the file and absent in wan-jax

  def report(self, source: str) -> str:
    """The start-up text: notices, then every key not used, grouped by reason."""
    lines = [f"ai-toolkit job {source} -> wan-jax config (--print_config shows all of it)"]
    lines += [f"  notice: {n}" for n in self.notices]
    if self.unused or self.off:
      lines.append("  not used:")
      by_reason: dict[str, list[str]] = {}
      for path, why in self.unused:
        by_reason.setdefault(why, []).append(path)
      lines += [f"    {_paths(paths)}: {why}" for why, paths in by_reason.items()]
      if self.off:
        lines.append(f"    {_paths(self.off)}: off, empty or 0 in the file (nothing is lost)")
    return "\n".join(lines)


def _paths(paths: list[str]) -> str:
  """Key paths with a shared parent written once: `a.model.{quantize, qtype}`."""
  groups: dict[str, list[str]] = {}
  for p in paths:
    parent, _, key = p.rpartition(".") if not p.endswith("]") else (p, "", "")
    groups.setdefault(parent, []).append(key)
  out = []
  for parent, keys in groups.items():
    if keys == [""]:
      out.append(parent)
    elif not parent:
      out += keys
    else:
      out.append(f"{parent}.{keys[0]}" if len(keys) == 1 else f"{parent}.{{{', '.join(keys)}}}")
  return ", ".join(out)


def split_prompt(prompt: str) -> tuple[str, dict[str, str]]:
  """An ai-toolkit prompt string: the text before the first `--`, then its `--flag value` parts
  (`a fox --ctrl_img /data/fox.png --seed 3`), read as ai-toolkit's GenerateImageConfig does."""
  text, *parts = prompt.strip().split("--")
  flags = {}
  for part in parts:
    flag = part.split(" ")[0].strip()
    flags[flag] = part[len(flag):].strip()  # a later one wins, as there
  return text.strip(), flags


def load_job(path: str | os.PathLike, base_config: BaseConfig) -> Job:
  """Reads and maps the job file at `path`; raises JobError (one line) when it cannot run."""
  return map_job(read_job(path), base_config)


def map_job(data: dict[str, Any], base_config: BaseConfig) -> Job:
  """Maps a job's data onto `base_config(config file)`: the get_config of the variant its arch
  names (wan_jax/variants.py)."""
  return _Mapper(data, base_config).run()


class _Mapper:
  def __init__(self, data: dict[str, Any], base_config: BaseConfig):
    self.root = Section(data, "")
    self.base_config = base_config
    self.notices: list[str] = []
    self.i2v = False  # model.arch is image-to-video (set by run)
    self.takes_images = False  # its previews take start images (set by run)

  def run(self) -> Job:
    job = self.root.get("job", str, None)
    if job not in ("extension", "train"):
      raise JobError(f"job must be 'extension' (an ai-toolkit training job), got {job!r}")
    top = self.root.section("config", required=True)
    name = top.get("name", str, None)
    if not name:
      raise JobError("config.name is required (the run's name: files and the output folder)")
    processes = top.get("process", list, None)
    if not processes:
      raise JobError("config.process must hold one training process")
    if len(processes) > 1:
      raise JobError(f"config.process has {len(processes)} entries; wan-jax runs one process "
                     "per job: put each in its own file")
    proc = top.item("process", 0)
    kind = proc.get("type", str, "sd_trainer")
    if kind not in PROCESS_TYPES:
      raise JobError(f"{proc.path}.type {kind!r} is not a trainer wan-jax runs "
                     f"({', '.join(PROCESS_TYPES)})")
    model = proc.section("model")
    self.variant = self._arch(model)
    self.i2v = self.variant.task == "i2v"
    self.takes_images = self.variant.task_object.takes_preview_images  # I2V, or TI2V optionally
    c = self.base_config(self.variant.config_file)
    c.model.arch = self.variant.arch
    c.save.name = name
    seed = proc.get("training_seed", int, None)
    if seed is not None:
      c.seed = seed
    train = proc.section("train")
    accum = self._accumulation(train, c)
    self._model(model, c)
    self._network(proc, c)
    self._train(train, c, accum)
    self._save(proc.section("save"), c, accum)
    trigger = proc.get("trigger_word", str, None)
    self._datasets(proc, c, trigger)
    self._sample(proc.section("sample"), train, c, accum, trigger)
    logs = proc.section("logging")
    c.train.log_every = logs.get("log_every", int, c.train.log_every)
    if logs.get("use_wandb", bool, False):  # ai-toolkit's project when none is named
      c.logging.wandb_project = logs.get("project_name", str, None) or "ai-toolkit"
    c.train.switch_boundary_every *= accum
    workdir = str(Path(proc.get("training_folder", str, "output")) / name)
    unused, off = self.root.unused(ai_toolkit_keys.reason, ai_toolkit_keys.is_off)
    return Job(c, workdir, self.notices, unused, off)

  # -- model ------------------------------------------------------------------------------------
  def _arch(self, model: Section) -> Variant:
    raw = model.get("arch", str, None)
    where = f"{model.path}.arch"
    if raw is None:
      raise JobError(f"{where} is missing: set it to one of " + ", ".join(
          f"{v.ai_toolkit[0]} ({v.title})" for v in VARIANTS.values() if not v.tiny))
    arch = raw.split(":")[0]  # the UI writes "wan22_14b:t2v"; ai-toolkit drops the tag
    variant = by_ai_toolkit(arch)
    if variant is None:
      what = "is another Wan model" if arch.startswith("wan") else "is not a Wan 2.2 model"
      known = ", ".join(f"{v.title} (arch: {v.ai_toolkit[0]})" for v in VARIANTS.values()
                        if v.ai_toolkit and not v.tiny)
      raise JobError(f"{where} {raw!r} {what}; wan-jax trains {known}, or the tiny demos "
                     f"({', '.join(v.arch for v in VARIANTS.values() if v.tiny)})")
    if arch == "wan22_14b_i2v":  # its model class keeps the T2V boundary (a todo in its code)
      self.notices.append(f"{where} {raw}: the experts switch at model.boundary=0.9, the "
                          "I2V-A14B release's value; ai-toolkit switches at 0.875 as for T2V "
                          "(--config.model.boundary=0.875 for its run)")
    return variant

  def _model(self, model: Section, c: ml_collections.ConfigDict) -> None:
    path = model.get("name_or_path", str, None)
    if path:
      c.model.name_or_path = self._local(path, f"{model.path}.name_or_path", release=True)
    extras = model.get("extras_name_or_path", str, None)
    vae = model.get("vae_path", str, None)
    if extras and extras != path:
      extras = self._local(extras, f"{model.path}.extras_name_or_path")
      c.model.vae_path = c.model.text_encoder_path = c.model.tokenizer_path = extras
    if vae:
      c.model.vae_path = self._local(vae, f"{model.path}.vae_path")
    te = model.get("te_name_or_path", str, None)
    if te:
      c.model.text_encoder_path = c.model.tokenizer_path = self._local(
          te, f"{model.path}.te_name_or_path")
    kwargs = model.section("model_kwargs")
    if self.variant.single_expert:  # one model (wan22_5b): no experts to choose
      if model.get("low_vram", bool, False):
        self.notices.append(f"{model.path}.low_vram: {self.variant.title} has one model, so "
                            "nothing waits idle to offload; the memory plan fits it to the card")
      self._quantize(model, c)
      return
    c.model.train_high_noise = kwargs.get("train_high_noise", bool, True)
    c.model.train_low_noise = kwargs.get("train_low_noise", bool, True)
    if not (c.model.train_high_noise or c.model.train_low_noise):
      raise JobError(f"{kwargs.path}: train_high_noise and train_low_noise are both false; "
                     "at least one expert must train")
    if self.i2v:
      self._image_i2v(kwargs, c)
    self._quantize(model, c)
    if model.get("low_vram", bool, False):
      c.train.offload_inactive_expert = True
      self.notices.append(f"{model.path}.low_vram: the idle expert waits in host memory "
                          "(train.offload_inactive_expert=True, a swap at every switch); remove "
                          "it to let the memory plan keep both on the card when they fit")

  def _image_i2v(self, kwargs: Section, c: ml_collections.ConfigDict) -> None:
    """`model_kwargs.image_i2v_*` (how still images train image-to-video) onto `image_i2v.*`,
    same names, meanings and defaults; the clip's frame count becomes 4k+1 as ai-toolkit rounds
    it, (n // 4) * 4 + 1 (at least 5 here: one frame is the image itself)."""
    ours = c.image_i2v
    for name in ("conditioning", "clip_training"):
      ours[name] = kwargs.get(f"image_i2v_{name}", bool, ours[name])
    for name in ("conditioning_prob", "clip_training_prob", "clip_downscale_factor"):
      value = kwargs.get(f"image_i2v_{name}", float, ours[name])
      if not 0.0 <= value <= 1.0:
        raise JobError(f"{kwargs.path}.image_i2v_{name} must be in [0, 1], got {value:g}")
      ours[name] = value
    sigma = kwargs.get("image_i2v_clip_blur_sigma", float, ours.clip_blur_sigma)
    if sigma < 0:
      raise JobError(f"{kwargs.path}.image_i2v_clip_blur_sigma must be >= 0, got {sigma:g}")
    ours.clip_blur_sigma = sigma
    asked = kwargs.get("image_i2v_clip_num_frames", int, ours.clip_num_frames)
    ours.clip_num_frames = nearest_clip_frames(asked)
    if ours.clip_num_frames != asked:
      self.notices.append(f"{kwargs.path}.image_i2v_clip_num_frames {asked}: static clips have "
                          f"{ours.clip_num_frames} frames (4k+1, at least 5)")
    if ours.conditioning and ours.clip_training:
      self.notices.append(f"{kwargs.path}: with image_i2v_clip_training on, images not drawn as "
                          "clips train with an empty condition; image_i2v_conditioning is not "
                          "used (as in ai-toolkit)")

  def _quantize(self, model: Section, c: ml_collections.ConfigDict) -> None:
    """`quantize: true` is an fp8 base (model.quantize=fp8): ai-toolkit's default qtype,
    qfloat8, is the same idea (float8 weights, bf16 compute); other qtypes get fp8 too, with a
    notice saying what differs."""
    qtype = model.get("qtype", str, "qfloat8")
    if not model.get("quantize", bool, False):
      return
    c.model.quantize = "fp8"
    kind, _, adapter = qtype.partition("|")
    if kind != "qfloat8":
      what = f" and no accuracy-recovery adapter (its {adapter} is not loaded)" if adapter else ""
      self.notices.append(
          f"{model.path}.qtype {qtype!r}: the base is stored in fp8 instead (model.quantize=fp8:"
          f" float8_e4m3fn with one scale per 64 inputs, dequantised to bf16 per block){what}; "
          "fp8 is 8 bits per weight")
    else:
      self.notices.append(
          f"{model.path}.quantize: the base is stored in fp8 (model.quantize=fp8: float8_e4m3fn "
          "with one scale per 64 inputs, dequantised to bf16 per block, as qfloat8 computes in "
          "bf16); the LoRA files load on the bf16 base as usual")

  def _local(self, path: str, where: str, release: bool = False) -> str:
    """A local folder or file; a hub id gets the download-and-convert recipe (for the model's
    `release`: the job's variant's, e.g. Wan-AI/Wan2.2-TI2V-5B; another variant's is refused)."""
    if HUB_ID.match(path) and not Path(path).expanduser().exists():
      v = self.variant
      named = [o for o in VARIANTS.values() if o.release and _release_tag(o) in path.lower()]
      if release and named and v not in named:
        raise JobError(
            f"{where} {path!r} is a {named[0].title} release but the job trains {v.title} "
            f"(model.arch); use a {v.title} release, e.g. {v.release or 'a converted folder'}-"
            "Diffusers")
      local = "/models/" + path.split("/")[-1]
      what = f" of the {v.title} release" if release and v.release else ""
      raise JobError(
          f"{where} {path!r} is not a local folder and looks like a Hugging Face hub id{what}; "
          f"wan-jax reads local files only: download it (huggingface-cli download {path} "
          f"--local-dir {local}), convert it once (python convert/wan22.py {local} "
          f"{local}-jax) and set {where.rsplit('.', 1)[-1]}: {local}-jax")
    return path

  # -- network ----------------------------------------------------------------------------------
  def _network(self, proc: Section, c: ml_collections.ConfigDict) -> None:
    if proc.data.get("network") is None:
      c.lora.enabled = False
      self.notices.append(f"{proc.path} has no network section: full fine-tuning of the "
                          "trained experts, as in ai-toolkit")
      proc.get("network", dict, None)
      return
    net = proc.section("network")
    kind = net.get("type", str, "lora")
    if kind.lower() != "lora":
      raise JobError(f"{net.path}.type {kind!r} is not supported: wan-jax trains LoRA "
                     "(type: lora) or, without a network section, the full experts")
    rank = net.get("rank", int, None)
    linear = net.get("linear", int, None)
    c.lora.enabled = True
    c.lora.rank = rank if rank is not None else linear if linear is not None else 4
    alpha = net.get("alpha", float, 1.0)
    c.lora.alpha = net.get("linear_alpha", float, alpha)
    if c.lora.rank < 1:
      raise JobError(f"{net.path}.linear must be >= 1, got {c.lora.rank}")
    if c.lora.alpha != c.lora.rank:
      self.notices.append(
          f"{net.path}.linear_alpha {c.lora.alpha:g} differs from the rank {c.lora.rank}: "
          f"wan-jax scales the LoRA by alpha/rank = {c.lora.alpha / c.lora.rank:g} and stores "
          "alpha in the files (ai-toolkit's UI sets alpha = rank whenever the rank is edited)")

  # -- train ------------------------------------------------------------------------------------
  def _accumulation(self, train: Section, c: ml_collections.ConfigDict) -> int:
    """ai-toolkit's `gradient_accumulation` N makes one of its steps N batches; wan-jax counts
    batches, so step-based settings are scaled by the returned factor. The older
    `gradient_accumulation_steps` N keeps one batch per step and updates every N."""
    per_step = train.get("gradient_accumulation", int, 1)
    legacy = train.get("gradient_accumulation_steps", int, 1)
    if per_step > 1 and legacy != 1:
      raise JobError(f"{train.path}: gradient_accumulation and gradient_accumulation_steps are "
                     "mutually exclusive (as in ai-toolkit)")
    if legacy == -1:
      raise JobError(f"{train.path}.gradient_accumulation_steps -1 (a whole epoch) is not "
                     "supported; give a number of batches")
    if per_step < 1 or legacy < 1:
      raise JobError(f"{train.path}.gradient_accumulation must be >= 1")
    c.train.grad_accum = max(per_step, legacy)
    if per_step > 1:
      self.notices.append(
          f"{train.path}.gradient_accumulation {per_step}: an ai-toolkit step is {per_step} "
          f"batches and wan-jax counts batches, so train.steps, save, sample and "
          f"switch_boundary_every intervals are multiplied by {per_step}")
    return per_step

  def _train(self, train: Section, c: ml_collections.ConfigDict, accum: int) -> None:
    c.train.steps = train.get("steps", int, 1000) * accum
    c.train.batch_size = train.get("batch_size", int, 1)
    lr = train.get("lr", float, 1e-6)
    c.train.learning_rate = train.get("unet_lr", float, lr)
    self._optimizer(train, c)
    self._schedule(train, c)
    c.train.max_grad_norm = train.get("max_grad_norm", float, 1.0)
    c.train.gradient_checkpointing = train.get("gradient_checkpointing", bool, True)
    kind = train.get("timestep_type", str, "sigmoid")
    c.train.timestep_sampling = TIMESTEPS.get(kind, "uniform")
    if kind not in TIMESTEPS:
      self.notices.append(f"{train.path}.timestep_type {kind!r} is not offered: uniform "
                          "timesteps instead (linear -> uniform, sigmoid -> logit_normal, "
                          "shift -> shift are)")
    if kind == "sigmoid":
      c.train.logit_mean, c.train.logit_std = 0.0, 1.0
    bias = train.get("content_or_style", str, "balanced")
    if bias != "balanced":
      self.notices.append(f"{train.path}.content_or_style {bias!r}: timestep bias is not "
                          "offered; the timesteps follow timestep_type alone")
    if not train.get("diff_output_preservation", bool, False):  # its settings do nothing
      for key in ("diff_output_preservation_multiplier", "diff_output_preservation_class"):
        train.get(key, "any", None)
    c.train.switch_boundary_every = train.get("switch_boundary_every", int, 1)
    dtype = train.get("dtype", str, "fp32")
    c.model.dtype = self._dtype(dtype, f"{train.path}.dtype")
    if c.model.dtype == "float16":
      c.model.dtype = "bfloat16"
      self.notices.append(f"{train.path}.dtype {dtype}: wan-jax trains in bfloat16 instead "
                          "(same memory, no loss scaling)")
    if not train.get("train_unet", bool, True):
      raise JobError(f"{train.path}.train_unet is false: there is nothing else to train")
    if train.get("train_text_encoder", bool, False):
      raise JobError(f"{train.path}.train_text_encoder: training umT5 is not supported")
    for key, value in (("noise_scheduler", "flowmatch"), ("loss_type", "mse")):
      given = train.get(key, str, value)
      if given != value:
        raise JobError(f"{train.path}.{key} {given!r} is not supported: Wan 2.2 trains with "
                       f"{value}")
    if train.get("unload_text_encoder", bool, False):
      self.notices.append(
          f"{train.path}.unload_text_encoder: ai-toolkit then trains every item with the "
          "trigger word alone; wan-jax trains with the captions (their embeddings are cached, "
          "so umT5 is not in memory while training)")
    if train.get("cache_text_embeddings", bool, False):
      self.notices.append(
          f"{train.path}.cache_text_embeddings: ai-toolkit turns caption dropout off when it "
          "caches embeddings; wan-jax always caches them and still applies "
          "caption_dropout_rate (set it to 0 for the same run)")

  def _optimizer(self, train: Section, c: ml_collections.ConfigDict) -> None:
    name = train.get("optimizer", str, "adamw")
    if name.lower() not in ADAMW + ADAM:
      raise JobError(f"{train.path}.optimizer {name!r} is not supported: wan-jax trains with "
                     f"AdamW ({', '.join(ADAMW + ADAM)} map to it)")
    if name.lower() != "adamw":
      self.notices.append(f"{train.path}.optimizer {name}: AdamW with float32 moments (8-bit "
                          "states are not needed on an 80+ GB card)" if "8" in name else
                          f"{train.path}.optimizer {name}: AdamW with decoupled weight decay")
    params = train.section("optimizer_params")
    default_decay = 0.01 if name.lower() in ADAMW else 0.0  # torch / bitsandbytes defaults
    c.train.weight_decay = params.get("weight_decay", float, default_decay)

  def _schedule(self, train: Section, c: ml_collections.ConfigDict) -> None:
    name = train.get("lr_scheduler", str, "constant")
    if name not in SCHEDULES:
      raise JobError(f"{train.path}.lr_scheduler {name!r} is not supported "
                     f"({', '.join(SCHEDULES)} are)")
    c.train.lr_schedule = "cosine" if name == "cosine" else "constant"
    params = train.section("lr_scheduler_params")
    c.train.warmup_steps = 0
    if name == "constant_with_warmup":  # ai-toolkit's default warmup is 1000 steps
      c.train.warmup_steps = params.get("num_warmup_steps", int, 1000)

  def _dtype(self, value: str, where: str) -> str:
    if value.lower() not in DTYPES:
      raise JobError(f"{where} must be one of {', '.join(DTYPES)}, got {value!r}")
    return DTYPES[value.lower()]

  # -- save -------------------------------------------------------------------------------------
  def _save(self, save: Section, c: ml_collections.ConfigDict, accum: int) -> None:
    c.save.dtype = self._dtype(save.get("dtype", str, "float16"), f"{save.path}.dtype")
    every = save.get("save_every", int, 1000) * accum
    c.save.every = every
    c.checkpoint.every = max(1, every)  # ai-toolkit resumes from its saves: so do we
    c.checkpoint.keep = save.get("max_step_saves_to_keep", int, 5)

  # -- datasets ---------------------------------------------------------------------------------
  def _datasets(self, proc: Section, c: ml_collections.ConfigDict, trigger: str | None) -> None:
    raw = proc.get("datasets", list, None)
    if not raw:
      if not self.variant.tiny:
        raise JobError(f"{proc.path}.datasets must list at least one dataset")
      c.datasets[0].trigger_word = trigger or ""
      return
    c.datasets = [self._dataset(proc.item("datasets", i), trigger) for i in range(len(raw))]
    if self.variant.task == "ti2v":
      self._ti2v(proc, len(raw), c)
    images = [f"{proc.path}.datasets[{i}]" for i, ds in enumerate(c.datasets)
              if ds.num_frames == 1]
    if self.i2v and images:  # as ai-toolkit: an empty condition unless model_kwargs say more
      self.notices.append(f"{_paths(images)}: num_frames 1 (images) trains image-to-video as "
                          "ai-toolkit does: " + ImageTraining.from_config(c.image_i2v).ways())

  def _ti2v(self, proc: Section, count: int, c: ml_collections.ConfigDict) -> None:
    """ai-toolkit's `do_i2v` (default true) conditions every clip of a wan22_5b data set on its
    first frame; wan-jax draws that per row over all data sets (ti2v.i2v_prob)."""
    flags = [proc.item("datasets", i).get("do_i2v", bool, True) for i in range(count)]
    c.ti2v.i2v_prob = 1.0 if any(flags) else 0.0
    if any(flags) and not all(flags):
      self.notices.append(
          f"{proc.path}.datasets[*].do_i2v: set on some data sets only; wan-jax conditions "
          "every clip on its first frame (ti2v.i2v_prob=1.0; set a share in [0, 1] to mix in "
          "text-to-video rows from every data set)")

  def _dataset(self, ds: Section, trigger: str | None) -> ml_collections.ConfigDict:
    if ds.get("is_reg", bool, False):
      raise JobError(f"{ds.path}.is_reg: regularisation datasets are not supported (they would "
                     "be trained as ordinary data); remove this dataset")
    if not ds.get("shrink_video_to_frames", bool, True):
      raise JobError(f"{ds.path}.shrink_video_to_frames false (a random window at fps) is not "
                     "supported: wan-jax caches latents, which needs the same frames every epoch")
    if ds.get("random_crop", bool, False):
      raise JobError(f"{ds.path}.random_crop is not supported: wan-jax caches latents, which "
                     "needs the same crop every epoch")
    out = dataset_config(
        folder_path=ds.get("folder_path", str, ""),
        mask_path=ds.get("mask_path", str, ""),
        invert_mask=ds.get("invert_mask", bool, False),
        mask_min_value=ds.get("mask_min_value", float, 0.0),
        alpha_mask=ds.get("alpha_mask", bool, False),
        caption_ext=ds.get("caption_type", str, None) or ds.get("caption_ext", str, "txt"),
        default_caption=ds.get("default_caption", str, ""),
        caption_dropout_rate=ds.get("caption_dropout_rate", float, 0.0),
        resolution=ds.get("resolution", "sizes", [512]),
        num_frames=ds.get("num_frames", "frames", 1),
        fps=ds.get("fps", float, 24.0),
        frame_selection="evenly",
        repeats=ds.get("num_repeats", int, 1),
        loss_multiplier=ds.get("loss_multiplier", float, 1.0),
        flip_prob=0.5 if ds.get("flip_x", bool, False) else 0.0,
        trigger_word=ds.get("trigger_word", str, None) or trigger or "",
        missing_mask="error",
    )
    for key in ("cache_latents", "cache_latents_to_disk", "cache_text_embeddings"):
      ds.get(key, bool, None)  # wan-jax always caches both (docs/from_ai_toolkit.md)
    return out

  # -- sample -----------------------------------------------------------------------------------
  def _sample(self, sample: Section, train: Section, c: ml_collections.ConfigDict, accum: int,
              trigger: str | None) -> None:
    p = c.preview
    samples = self._prompts(sample)
    p.every = sample.get("sample_every", int, 100) * accum
    if train.get("disable_sampling", bool, False) or not samples:
      p.every = 0
    p.width = sample.get("width", int, 512)
    p.height = sample.get("height", int, 512)
    p.num_frames = sample.get("num_frames", int, 1)
    p.negative_prompt = sample.get("neg", str, "") or ""
    p.seed = sample.get("seed", int, 0)
    p.guidance_low_noise = p.guidance_high_noise = sample.get("guidance_scale", float, 7.0)
    p.num_steps = sample.get("sample_steps", int, 20)
    if p.every:  # checked only when previews run, as the trainer does
      side = self.variant.geometry.side_multiple
      for key in ("width", "height"):
        if p[key] < side or p[key] % side:
          raise JobError(f"{sample.path}.{key} must be a multiple of {side} pixels, got {p[key]}")
      sample.get("num_frames", "frames", 1)
    texts = [text for text, _, _ in samples]
    p.prompts = [apply_trigger(t, trigger, add_if_missing=False) if trigger else t
                 for t in texts] or list(p.prompts)
    if self.i2v:
      self._start_images(samples, p, self.variant.tiny)
    elif self.takes_images and any(image for _, image, _ in samples):  # TI2V: optional
      p.images = [image or "" for _, image, _ in samples]
    if not trigger and any(ph in t for t in texts for ph in PLACEHOLDERS):
      process = sample.path.rsplit(".", 1)[0]
      self.notices.append(f"{sample.path}: a prompt holds [trigger] but {process}.trigger_word "
                          "is not set: kept as written, as ai-toolkit does")

  def _prompts(self, sample: Section) -> list[tuple[str, str | None, str]]:
    """(text, start image, where its image goes) of each sample with a prompt; flags in a prompt
    (`--seed 3`) are removed as ai-toolkit reads them, and `--ctrl_img` is the start image."""
    if sample.data.get("samples") is None:
      raw = [(t, None, f"{sample.path}.prompts[{i}] --ctrl_img")
             for i, t in enumerate(sample.get("prompts", "texts", []))]
    else:
      sample.get("prompts", "texts", [])  # ai-toolkit ignores it when samples are given
      raw = []
      for i in range(len(sample.get("samples", list, []))):
        item = sample.item("samples", i)
        image = item.get("ctrl_img", str, None) if self.takes_images else None  # T2V: unused
        raw.append((item.get("prompt", str, "") or "", image, f"{item.path}.ctrl_img"))
    out, ignored = [], set()
    for prompt, image, where in raw:
      text, flags = split_prompt(prompt)
      if not text:
        continue  # ai-toolkit skips samples without a prompt
      if self.takes_images and "ctrl_img" in flags:
        image = flags.pop("ctrl_img")  # the prompt's flag wins, as in ai-toolkit
      ignored.update(flags)
      out.append((text, image or None, where))
    if ignored:
      why = ("; --ctrl_img is a start image, for arch wan22_14b_i2v or wan22_5b"
             if "ctrl_img" in ignored
             else "")
      flags = ", ".join("--" + f for f in sorted(ignored))
      self.notices.append(
          f"{sample.path}: {flags} in the prompts "
          f"{'is' if len(ignored) == 1 else 'are'} removed from them and not applied: wan-jax "
          f"renders every preview prompt with the sample block's settings{why}")
    return out

  def _start_images(self, prompts: list[tuple[str, str | None, str]],
                    p: ml_collections.ConfigDict, tiny: bool) -> None:
    """preview.images: each I2V preview prompt's start image, in order; a prompt without one is
    an error while previews run (the tiny demo generates one when no prompt has any)."""
    images = [image for _, image, _ in prompts]
    missing = [where for _, image, where in prompts if image is None]
    if not missing:
      p.images = images
      return
    p.images = []
    if not p.every or (tiny and len(missing) == len(images)):
      return
    more = f" ({len(missing) - 1} more sample prompts lack one)" if len(missing) > 1 else ""
    raise JobError(
        f"{missing[0]} is missing: an image-to-video preview starts from an image, so every "
        f"sample prompt needs one (samples[i].ctrl_img, or --ctrl_img <path> in the prompt){more}; "
        "or turn previews off (train.disable_sampling: true)")
