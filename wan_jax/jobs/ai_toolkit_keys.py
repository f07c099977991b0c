"""Why an ai-toolkit key has no effect in wan-jax: one short reason per key, by section.

The start-up report lists every key of a job file that was not mapped, with the reason from here
(or the section's fallback), so nothing in a file is silently dropped. Key names and meanings
were read from ai-toolkit's `toolkit/config_modules.py` (its config classes and defaults).
"""

from __future__ import annotations

from typing import Any

_DEVICES = "wan-jax uses every visible device (mesh.*); choose GPUs with CUDA_VISIBLE_DEVICES"
_NO_QUANT = ("the text encoder runs once, into the cache, and never during training")
_LOGS = "wan-jax logs every step to metrics.jsonl and TensorBoard"
_ALWAYS_CACHED = "wan-jax always caches latents and prompt embeddings on disk (cache.dir)"
_NOT_IMPLEMENTED = "not implemented in wan-jax"

# (section, key) -> reason. A section is the last named part of the key's parent path:
# process, network, save, datasets, train, model, sample, samples, logging, ...
REASONS: dict[tuple[str, str], str] = {
    ("", "meta"): "metadata for ai-toolkit's files; wan-jax stores the whole config in the "
                  "LoRA files' metadata",
    ("process", "device"): _DEVICES,
    ("process", "performance_log_every"): _LOGS,
    ("process", "sqlite_db_path"): "ai-toolkit UI's job database",
    ("process", "log_dir"): _LOGS,
    ("process", "logging"): _LOGS,
    ("logging", "use_ui_logger"): _LOGS,
    ("logging", "project_name"): "the W&B project, used only with use_wandb: true",
    ("logging", "run_name"): "the W&B run is named after config.name (save.name)",
    ("logging", "verbose"): _LOGS,
    ("network", "conv"): "Wan's transformer blocks have no convolutions to adapt",
    ("network", "conv_alpha"): "Wan's transformer blocks have no convolutions to adapt",
    ("network", "dropout"): "LoRA dropout is " + _NOT_IMPLEMENTED,
    ("network", "network_kwargs"): "wan-jax picks the adapted layers with lora.targets (globs; "
                                   "default: the ten block linears, as ai-toolkit)",
    ("network", "transformer_only"): "wan-jax adapts only the transformer",
    ("network", "lokr_full_rank"): "a LoKr option; wan-jax trains LoRA",
    ("network", "lokr_factor"): "a LoKr option; wan-jax trains LoRA",
    ("network", "old_lokr_format"): "a LoKr option; wan-jax trains LoRA",
    ("network", "split_multistage_loras"): "wan-jax always writes one file per expert",
    ("network", "pretrained_lora_path"): "starting from an existing LoRA is " + _NOT_IMPLEMENTED,
    ("network", "layer_offloading"): "the memory planner decides what waits in host memory",
    ("network", "all_layers"): "wan-jax adapts the layers in lora.targets",
    ("save", "save_format"): "wan-jax writes safetensors in ComfyUI's and diffusers' key format",
    ("save", "push_to_hub"): "wan-jax does not upload",
    ("save", "hf_repo_id"): "wan-jax does not upload",
    ("save", "hf_private"): "wan-jax does not upload",
    ("datasets", "network_weight"): "per-dataset LoRA strength is " + _NOT_IMPLEMENTED,
    ("datasets", "token_dropout_rate"): "caption token dropout is " + _NOT_IMPLEMENTED,
    ("datasets", "shuffle_tokens"): "caption token shuffling is " + _NOT_IMPLEMENTED,
    ("datasets", "keep_tokens"): "caption token shuffling is " + _NOT_IMPLEMENTED,
    ("datasets", "random_scale"): "latents are cached at fixed sizes",
    ("datasets", "scale"): "latents are cached at fixed sizes",
    ("datasets", "buckets"): "wan-jax always buckets by area (sides multiples of 16)",
    ("datasets", "bucket_tolerance"): "wan-jax's buckets have sides that are multiples of 16",
    ("datasets", "square_crop"): "wan-jax buckets by aspect instead of cropping square",
    ("datasets", "flip_y"): "vertical flips are " + _NOT_IMPLEMENTED,
    ("datasets", "augments"): "augmentations cannot be cached; " + _NOT_IMPLEMENTED,
    ("datasets", "augmentations"): "augmentations cannot be cached; " + _NOT_IMPLEMENTED,
    ("datasets", "num_workers"): "decoding threads are wan-jax's own (data.num_workers)",
    ("datasets", "prefetch_factor"): "wan-jax prefetches a fixed number of batches",
    ("datasets", "cache_latents_num_workers"): "wan-jax's scan uses its own threads",
    ("datasets", "load_image_when_caching_latents"): _ALWAYS_CACHED,
    ("datasets", "cache_tensors_to_disk"): _ALWAYS_CACHED,
    ("datasets", "cache_clip_vision_to_disk"): "Wan 2.2 A14B has no image encoder (I2V reads "
                                               "the VAE latents of each clip's first frame)",
    ("datasets", "do_i2v"): "with arch wan22_14b_i2v every clip is conditioned on its first "
                            "frame (ai-toolkit reads do_i2v for other models only; with "
                            "wan22_5b it sets ti2v.i2v_prob)",
    ("datasets", "auto_frame_count"): "wan-jax trains num_frames from every clip",
    ("datasets", "trim_auto_frame_count_tail"): "wan-jax trains num_frames from every clip",
    ("datasets", "use_short_captions"): "captions come from caption files (caption_ext)",
    ("datasets", "dataset_path"): "wan-jax reads folders: use folder_path",
    ("datasets", "type"): "wan-jax reads image and video folders",
    ("datasets", "batch_size"): "the batch size is train.batch_size",
    ("datasets", "debug"): _LOGS,
    ("datasets", "standardize_images"): _NOT_IMPLEMENTED,
    ("datasets", "extra_values"): _NOT_IMPLEMENTED,
    ("datasets", "random_triggers"): "random trigger words are " + _NOT_IMPLEMENTED,
    ("datasets", "random_triggers_max"): "random trigger words are " + _NOT_IMPLEMENTED,
    ("datasets", "replacements"): "caption replacements are " + _NOT_IMPLEMENTED,
    ("datasets", "controls"): "control images are for other models (Wan 2.2 A14B has none)",
    ("datasets", "prior_reg"): "regularisation data is " + _NOT_IMPLEMENTED,
    ("train", "noise_offset"): _NOT_IMPLEMENTED,
    ("train", "min_snr_gamma"): "loss weighting by SNR is " + _NOT_IMPLEMENTED,
    ("train", "snr_gamma"): "loss weighting by SNR is " + _NOT_IMPLEMENTED,
    ("train", "xformers"): "attention is model.attention (cuDNN flash attention on NVIDIA)",
    ("train", "sdp"): "attention is model.attention (cuDNN flash attention on NVIDIA)",
    ("train", "attention_backend"): "attention is model.attention (cuDNN flash attention on "
                                    "NVIDIA)",
    ("train", "bypass_guidance_embedding"): "a Flux option",
    ("train", "text_encoder_lr"): "umT5 is not trained",
    ("train", "ema_config"): "EMA weights are " + _NOT_IMPLEMENTED,
    ("train", "content_or_style"): "timestep bias is " + _NOT_IMPLEMENTED + " (use timestep_type)",
    ("train", "force_first_sample"): "wan-jax renders no preview before the first step",
    ("train", "skip_first_sample"): "wan-jax renders no preview before the first step",
    ("train", "diff_output_preservation"): _NOT_IMPLEMENTED,
    ("train", "diff_output_preservation_multiplier"): _NOT_IMPLEMENTED,
    ("train", "diff_output_preservation_class"): _NOT_IMPLEMENTED,
    ("train", "blank_prompt_preservation"): _NOT_IMPLEMENTED,
    ("train", "optimizer_params"): "wan-jax's AdamW takes only weight_decay",
    ("optimizer_params", "betas"): "wan-jax's AdamW uses betas (0.9, 0.999)",
    ("optimizer_params", "eps"): "wan-jax's AdamW uses eps 1e-8",
    ("lr_scheduler_params", "total_iters"): "schedules span train.steps",
    ("lr_scheduler_params", "T_max"): "schedules span train.steps",
    ("lr_scheduler_params", "eta_min"): "cosine decays to 0",
    ("model", "quantize_te"): _NO_QUANT,
    ("model", "qtype_te"): _NO_QUANT,
    ("model", "quantize_kwargs"): "model.quantize=fp8 has no options",
    ("model", "accuracy_recovery_adapter"): "an fp8 base needs no accuracy-recovery adapter",
    ("model", "text_encoder_bits"): _NO_QUANT,
    ("model", "dtype"): "wan-jax loads the experts in train.dtype (one dtype for weights and "
                        "compute)",
    ("model", "vae_dtype"): "the VAE runs in model.vae_dtype (float32)",
    ("model", "te_dtype"): "umT5 runs in model.text_encoder_dtype (bfloat16)",
    ("model", "vae_device"): _DEVICES,
    ("model", "te_device"): _DEVICES,
    ("model", "layer_offloading"): "the memory planner decides what waits in host memory",
    ("model", "layer_offloading_transformer_percent"): "the memory planner decides what waits "
                                                       "in host memory",
    ("model", "layer_offloading_text_encoder_percent"): "the memory planner decides what waits "
                                                        "in host memory",
    ("model", "auto_memory"): "the memory planner decides what waits in host memory",
    ("model", "split_model_over_gpus"): "use mesh.fsdp / mesh.tensor to split over GPUs",
    ("model", "compile"): "the train step is always compiled (XLA)",
    ("model", "block_compile"): "the train step is always compiled (XLA)",
    ("model", "compile_mode"): "the train step is always compiled (XLA)",
    ("model", "attn_masking"): "Wan pads prompts with zeros, as released",
    ("model", "lora_path"): "starting from an existing LoRA is " + _NOT_IMPLEMENTED,
    ("model", "assistant_lora_path"): _NOT_IMPLEMENTED,
    ("model", "inference_lora_path"): _NOT_IMPLEMENTED,
    ("model", "model_paths"): "components come from name_or_path (or vae_path)",
    ("model_kwargs", "*"): "wan-jax reads only train_high_noise, train_low_noise and (for arch "
                           "wan22_14b_i2v) image_i2v_* here; wan22_5b has one model",
    ("sample", "sampler"): "previews use wan-jax's Euler flow sampler",
    ("sample", "fps"): "previews are written at the release's rate (preview.fps: 16 for the "
                       "A14B, 24 for the 5B)",
    ("sample", "walk_seed"): "preview prompt i always starts from the noise of (seed, i)",
    ("sample", "sample_start_step"): "previews run every sample_every steps and at the end",
    ("sample", "format"): "previews are MP4 (PNG for one frame)",
    ("sample", "network_multiplier"): "previews use the LoRA at strength 1",
    ("sample", "guidance_rescale"): _NOT_IMPLEMENTED,
    ("sample", "refiner_start_at"): "the experts switch at model.boundary",
    ("samples", "ctrl_img"): "a start image, for image-to-video (arch wan22_14b_i2v); "
                             "text-to-video previews have none",
    ("samples", "*"): "wan-jax renders every preview prompt with the sample block's settings",
}

FALLBACK: dict[str, str] = {
    "": "not part of an ai-toolkit job",
    "datasets": "no wan-jax equivalent for this dataset option",
    "train": "no wan-jax equivalent for this training option",
    "model": "no wan-jax equivalent for this model option",
    "sample": "no wan-jax equivalent for this sampling option",
    "optimizer_params": "wan-jax's AdamW takes only weight_decay",
    "lr_scheduler_params": "only num_warmup_steps (constant_with_warmup) is read",
}
DEFAULT_REASON = "no wan-jax equivalent"


def reason(section: str, key: str) -> str:
  """Why `key` of `section` is not used."""
  return (REASONS.get((section, key)) or REASONS.get((section, "*")) or FALLBACK.get(section)
          or DEFAULT_REASON)


def is_off(value: Any) -> bool:
  """A value that leaves a feature off (false, null, 0, empty), or a block whose `use_*`
  switch is false (ai-toolkit's `ema_config: {use_ema: false, ...}`): nothing is lost by
  ignoring it."""
  if isinstance(value, dict):
    switches = [v for k, v in value.items() if str(k).startswith("use_")]
    if switches:
      return not any(switches)
    return all(is_off(v) for v in value.values())
  if isinstance(value, list):
    return not value
  return value is None or value is False or value == "" or (
      isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0)
