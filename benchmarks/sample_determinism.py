"""Where a re-rendered preview differs from the one a run rendered while training: the same
rendering twice, the exported bf16 LoRA files against the fp32 adapters of the final checkpoint,
the prompt encoded in two batch sizes, and what the MP4 codec adds. Prints max / mean pixel
differences (levels of 255); docs/training.md ("Sampling") has the figures.

  python launch.py --config configs/wan22_masked.py:tiny      # runs/demo
  PYTHONPATH=. python benchmarks/sample_determinism.py runs/demo
"""
import json, sys, tempfile
from pathlib import Path
import jax, jax.numpy as jnp, numpy as np, ml_collections, imageio.v3 as iio
import orbax.checkpoint as ocp
from flax import nnx
from wan_jax.sampling.sampler import load_dual, encode
from wan_jax.train.run import loading
from wan_jax.train.step.expert_schedule import HIGH, LOW
from wan_jax.model.lora import add_lora, lora_state
from wan_jax.model.dual import DualWanTransformer
from wan_jax.model.prompts import tokenize, encode_tokens
from wan_jax.model.vae import decode_latents
from wan_jax.train.outputs.preview import sample_latents, Guidance
from wan_jax.train.outputs import media_out

run = Path(sys.argv[1])
cfg = ml_collections.ConfigDict(json.loads((run / "config.json").read_text()))
p = cfg.preview
variant = loading.variant(cfg)  # two experts, or the 5B's one model
files = {e: run / f"lora/{cfg.save.name}{variant.file_suffix(e)}.safetensors"
         for e in variant.experts}
dual_bf16 = load_dual(cfg, files)
# fp32: the trained adapters from the final Orbax checkpoint (what the in-training preview used)
state = ocp.StandardCheckpointer().restore(str(run / f"checkpoints/{cfg.train.steps}/state"))
experts = {}
for e in variant.experts:
  m = loading.load_expert(cfg, e, remat="none")
  add_lora(m, int(cfg.lora.rank), float(cfg.lora.alpha), list(cfg.lora.targets))
  ls = lora_state(m)
  def strip(d):
    return d["value"] if isinstance(d, dict) and set(d) == {"value"} else {k: strip(v) for k, v in d.items()}
  ls.replace_by_pure_dict(strip(state[e]["trainable"]))
  nnx.update(m, ls)
  experts[e] = m
dual_fp32 = DualWanTransformer(experts[HIGH], experts.get(LOW, experts[HIGH]),
                               float(cfg.model.boundary))

with tempfile.TemporaryDirectory() as d:
  enc = loading.encoders(cfg, Path(d))
  mine = encode([p.prompts[0], ""], enc)
  tok, encoder = enc.load_text()
  batch = [p.prompts[0], ""] + [""] * 6  # the cache's batch of PROMPT_BATCH = 8
  ids, mask = tokenize(batch, tok, enc.text_len)
  emb = np.asarray(encode_tokens(encoder, jnp.asarray(ids), jnp.asarray(mask)))
  cache = [jnp.asarray(emb[i:i+1, :max(1, int(mask[i].sum()))].astype(np.float32)) for i in (0, 1)]
print("context: batch-2 vs batch-8 encoding, max abs diff",
      float(jnp.abs(mine[0] - cache[0]).max()), float(jnp.abs(mine[1] - cache[1]).max()))
vae = enc.load_vae()
shape = (1, *loading.variant(cfg).geometry.latent_shape(p.num_frames, p.height, p.width))

def frames(dual, ctx):
  length = max(ctx[0].shape[1], ctx[1].shape[1])
  pad = lambda c: jnp.pad(c, ((0, 0), (0, length - c.shape[1]), (0, 0)))
  lat = sample_latents(dual, pad(ctx[0]), ctx[1], shape, jax.random.fold_in(jax.random.key(p.seed), 0),
                       num_steps=p.num_steps, shift=p.shift,
                       guidance=Guidance(p.guidance_low_noise, p.guidance_high_noise),
                       task=loading.task(cfg))
  return media_out.to_uint8(np.asarray(decode_latents(vae, lat))[0]).astype(int), np.asarray(lat)

def diff(name, a, b):
  print(f"{name}: max {np.abs(a - b).max()} /255, mean {np.abs(a - b).mean():.3f}")

a1, la1 = frames(dual_bf16, mine)
a2, la2 = frames(dual_bf16, mine)
diff("bf16 file, twice in one process", a1, a2)
b, lb = frames(dual_fp32, cache)
print("latents fp32 vs bf16 max abs", float(np.abs(lb - la1).max()))
diff("fp32 adapters (checkpoint) vs bf16 file (exported)", b, a1)
c, _ = frames(dual_fp32, mine)
diff("fp32, batch-2 vs batch-8 prompt encoding", c, b)
train_mp4 = iio.imread(run / f"previews/step_{cfg.train.steps:06d}_0.mp4", plugin="pyav").astype(int)
out = Path(tempfile.mkdtemp())
fps = int(p.get("fps", variant.preview.fps))
media_out.write_video(b.astype(np.uint8), out / "b.mp4", fps=fps)
b_mp4 = iio.imread(out / "b.mp4", plugin="pyav").astype(int)
diff("training preview mp4 vs fp32 re-render through mp4", train_mp4, b_mp4)
diff("mp4 round trip of the fp32 re-render (codec loss)", b, b_mp4)
media_out.write_video(a1.astype(np.uint8), out / "a.mp4", fps=fps)
diff("training preview mp4 vs bf16 re-render through mp4", train_mp4, iio.imread(out / "a.mp4", plugin="pyav").astype(int))
