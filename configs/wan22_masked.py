"""Wan 2.2 A14B with masked loss: LoRA on both experts, caches, previews.

  python launch.py --config configs/wan22_masked.py \
      --config.model.name_or_path=/ckpt/wan22-jax --config.datasets[0].folder_path=/data/person \
      --config.datasets[0].mask_path=/data/person_masks --workdir runs/person
  python launch.py --config configs/wan22_masked.py:tiny   # the built-in demo, CPU, minutes

`model.name_or_path` is a folder made by `convert/wan22.py` (or a Wan release folder); the VAE,
umT5 and tokenizer come from the same folder unless `model.vae_path` etc. say otherwise.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from wan_jax.data.config import dataset_config
from wan_jax.model.lora import DEFAULT_TARGETS
from wan_jax.variants import get_variant


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  release = get_variant("wan22_t2v_a14b")  # its sizes, boundary and previews: wan_jax/variants.py
  c.model = ml_collections.ConfigDict()
  c.model.arch = release.arch  # or "tiny" (random weights, for the demo and tests)
  c.model.name_or_path = ""  # converted checkpoint folder (convert/wan22.py) or a release folder
  c.model.random_weights = False  # True: real-size random experts/VAE/umT5, no checkpoint (GPU
  #                                 smoke runs and benchmarks; trains on generated clips)
  c.model.vae_path = ""  # "" = the VAE in name_or_path
  c.model.text_encoder_path = ""  # "" = umT5 in name_or_path
  c.model.tokenizer_path = ""  # "" = the tokenizer in name_or_path
  c.model.dtype = "bfloat16"  # base weights; LoRA weights are always float32
  c.model.quantize = "none"  # "fp8": the blocks' frozen linear kernels in float8 with scales
  #                            (half the memory; changes the model: opt-in, LoRA runs only)
  c.model.vae_dtype = "float32"
  c.model.text_encoder_dtype = "bfloat16"
  c.model.boundary = release.boundary  # t >= boundary*1000 -> high-noise expert (0.875)
  c.model.train_high_noise = True
  c.model.train_low_noise = True
  c.model.attention = "auto"  # auto | cudnn | xla | chunked

  c.lora = ml_collections.ConfigDict()
  c.lora.enabled = True  # False = full fine-tuning of the trained experts
  c.lora.rank = 32
  c.lora.alpha = 32.0
  c.lora.targets = list(DEFAULT_TARGETS)

  c.train = ml_collections.ConfigDict()
  c.train.steps = 2000
  c.train.batch_size = 1  # global batch
  c.train.grad_accum = 1
  c.train.learning_rate = 1e-4
  c.train.lr_schedule = "constant"  # constant | cosine (both after warmup)
  c.train.warmup_steps = 0
  c.train.weight_decay = 0.0
  c.train.max_grad_norm = 1.0  # 0 = no clipping
  c.train.switch_boundary_every = 10  # with both experts: alternate every N steps (high first)
  c.train.timestep_sampling = "shift"  # uniform | logit_normal | shift (restricted per expert)
  c.train.shift = 5.0
  c.train.logit_mean = 0.0
  c.train.logit_std = 1.0
  # How the run fits the device: "auto" compiles the step for the largest bucket before the
  # weights load and takes the fastest plan that fits (docs/training.md); "off" trusts the two
  # settings below as given (remat full, both experts on the device unless set).
  c.train.memory_plan = "auto"
  c.train.remat_policy = "auto"  # auto | full | save_attention | offload_residual |
  #                                save_attention+offload_residual | none (explicit: not searched)
  c.train.offload_inactive_expert = config_dict.placeholder(bool)  # None = the plan decides
  # The trained expert's frozen block weights in pinned host memory, fetched block by block
  # inside the step (LoRA runs): auto = only when no resident plan fits; True | False fix it.
  c.train.stream_weights = "auto"
  c.train.device_memory_gib = 0.0  # 0 = the device's own limit; e.g. 79 to plan for an H100
  c.train.memory_margin = 0.05  # fraction of the device kept free of the predicted peak
  c.train.host_memory_gib = 0.0  # pinned host RAM the plan may use; 0 = what the host has free
  c.train.gradient_checkpointing = True  # False = remat_policy "none" (the older key)
  c.train.sample_posterior = True  # draw latents from the VAE posterior (False: its mean)
  c.train.log_every = 1
  c.train.max_skipped_in_a_row = 20  # stop when this many steps in a row were skipped (0 = never)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1 fills the remaining devices
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.min_shard_size = 2**16  # arrays with fewer elements (per layer) stay replicated

  c.cache = ml_collections.ConfigDict()
  c.cache.dir = ""  # "" = $WAN_JAX_CACHE or ~/.cache/wan_jax
  c.cache.dtype = "float32"  # float32 | float16

  c.data = ml_collections.ConfigDict()
  c.data.num_workers = 0  # Grain worker processes (0 = threads in this process)

  c.datasets = [dataset_config(resolution=[480], num_frames=81, mask_min_value=0.1)]

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 250
  c.checkpoint.keep = 3
  c.checkpoint.async_save = True

  c.save = ml_collections.ConfigDict()
  c.save.name = "wan22_lora"
  c.save.every = 250  # LoRA (or full) files for ComfyUI/diffusers every N steps and at the end
  c.save.dtype = "bfloat16"

  c.preview = ml_collections.ConfigDict()
  c.preview.every = 250  # 0 = no previews
  c.preview.prompts = ["a person walking through a park, natural light"]
  c.preview.images = []  # image-to-video only: one start image per prompt (configs/wan22_i2v_masked.py)
  c.preview.negative_prompt = ""
  c.preview.height = 480
  c.preview.width = 832
  c.preview.num_frames = 81
  c.preview.num_steps = release.preview.steps
  c.preview.fps = release.preview.fps  # of the MP4s (the release renders at this rate)
  c.preview.shift = release.preview.shift  # upstream's sampling defaults for the release
  c.preview.guidance_low_noise, c.preview.guidance_high_noise = release.preview.guidance
  c.preview.seed = 0

  # Always written: metrics.jsonl, TensorBoard events under tensorboard/, loss.png.
  c.logging = ml_collections.ConfigDict()
  c.logging.wandb_project = ""  # Weights & Biases project ("" = off); pip install 'wan-jax[wandb]'
  c.logging.wandb_entity = ""  # W&B team or user ("" = the login's default)
  c.logging.wandb_required = True  # W&B unusable (package, login): True stops, False warns

  if variant == "tiny":
    _tiny(c)
  elif variant not in (None, "", "default"):
    raise ValueError(f"unknown variant {variant!r}; use configs/wan22_masked.py or ...:tiny")
  return c


def _tiny(c: ml_collections.ConfigDict) -> None:
  """The built-in demo: random tiny models and a generated data set, on the CPU in minutes."""
  c.model.arch = "tiny"
  c.model.dtype = "float32"
  c.lora.rank = 4
  c.lora.alpha = 8.0
  c.train.steps = 24
  c.train.batch_size = 2
  c.train.learning_rate = 2e-3
  c.train.warmup_steps = 2
  c.train.switch_boundary_every = 4
  c.train.timestep_sampling = "uniform"
  c.datasets = [dataset_config(folder_path="", mask_path="", resolution=[64], num_frames=5,
                               default_caption="a coloured ball", caption_dropout_rate=0.1,
                               mask_min_value=0.1, flip_prob=0.5)]
  c.checkpoint.every = 12
  c.save.name = "demo_lora"
  c.save.every = 12
  c.preview.every = 12
  c.preview.prompts = ["a red ball rolling to the right"]
  c.preview.height = 64
  c.preview.width = 64
  c.preview.num_frames = 5
  c.preview.num_steps = 6
