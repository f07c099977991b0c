"""sample.py, the sampling command: LoRA files written by the exporter (no training), read back
onto the right expert; the command's one-line errors; I2V with a LoRA (T2V from a run's files,
twice with the same bytes, is in test_launch's demo test)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import REPO, sample
from wan_jax.model.config import tiny, tiny_i2v
from wan_jax.model.transformer import WanTransformer
from wan_jax.sampling.loras import apply_lora, assign, check_made_for, expert_of
from wan_jax.train.step.expert_schedule import HIGH, LOW
from wan_jax.weights.export import save_lora
from wan_jax.model.lora import add_lora, block_linear, lora_targets

SMALL = ["--steps", "2", "--height", "32", "--width", "32", "--frames", "5", "--no-progress"]


def _trained(config, seed: int) -> WanTransformer:
  """A tiny expert (the demo's weights for `seed`) with rank-4 adapters whose B is not zero, as
  if trained."""
  model = WanTransformer(config, rngs=nnx.Rngs(seed))
  add_lora(model, 4, 8.0, seed=seed)
  for i, target in enumerate(lora_targets(model)):
    linear = block_linear(model, target)
    linear.lora_b.value = 0.05 * jax.random.normal(jax.random.key(100 + i), linear.lora_b.shape)
  return model


def _forward(model: WanTransformer) -> np.ndarray:
  x = jax.random.normal(jax.random.key(0), (1, 2, 4, 4, 16))
  context = jax.random.normal(jax.random.key(1), (1, 7, tiny().text_dim))
  return np.asarray(model(x, jnp.array([500.0]), context))


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> dict[str, Path]:
  """Exported LoRA files for both tiny T2V experts (seeds 0 and 1, as models.load_expert builds
  them) and a tiny I2V one, named as a run names them."""
  root = tmp_path_factory.mktemp("loras")
  out = {}
  for expert, name, seed in ((HIGH, "high_noise", 0), (LOW, "low_noise", 1)):
    out[expert] = save_lora(_trained(tiny(), seed), root / f"demo_lora_{name}.safetensors",
                            dtype="float32")
  out["i2v_high"] = save_lora(
      _trained(tiny_i2v(), 0), root / "demo_i2v_lora_high_noise.safetensors", dtype="float32",
      metadata={"modelspec.architecture": "wan-2.2-i2v-tiny-high-noise/lora"})
  return out


@pytest.mark.slow  # eager forwards of the tiny model: about 6 s
def test_exported_lora_loads_back_to_the_same_output(loras, tmp_path):
  trained = _trained(tiny(), 0)
  base = WanTransformer(tiny(), rngs=nnx.Rngs(0))
  before = _forward(base)
  apply_lora(base, loras[HIGH])
  after = _forward(base)
  np.testing.assert_array_equal(after, _forward(trained))
  assert np.abs(after - before).max() > 1e-3  # the adapters change the output
  other = WanTransformer(tiny(num_layers=1), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="adapts 2 blocks; the model has 1"):
    apply_lora(other, loras[HIGH])


def test_files_go_to_their_expert(loras, tmp_path):
  assert expert_of(loras[HIGH]) == HIGH and expert_of(loras[LOW]) == LOW
  anonymous = tmp_path / "person.safetensors"
  anonymous.write_bytes(loras[LOW].read_bytes())
  assert assign([loras[HIGH]], None, anonymous) == {HIGH: loras[HIGH], LOW: anonymous}
  with pytest.raises(ValueError, match="cannot tell which expert"):
    assign([anonymous], None, None)
  with pytest.raises(ValueError, match="two LoRA files for the high_noise expert"):
    assign([loras[HIGH]], loras[HIGH], None)
  with pytest.raises(ValueError, match="is a LoRA for wan-2.2-i2v-tiny-high-noise, but the model "
                     "is wan-2.2-t2v-tiny"):
    check_made_for(loras["i2v_high"], "tiny")
  check_made_for(loras[HIGH], "tiny")  # no modelspec metadata: nothing to refuse


def _main():
  spec = importlib.util.spec_from_file_location("sample_cli", REPO / "sample.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.main


@pytest.mark.parametrize("args, message", [
    ([], "give --run"),
    (["--run", "nowhere"], "no config.json there"),
    (["--model", "tiny"], "give at least one --prompt"),
    (["--model", "tiny", "--prompt", "p", "--lora", "missing.safetensors"],
     "LoRA file missing.safetensors does not exist"),
    (["--model", "tiny", "--prompt", "p", "--image", "x.png"], "takes no start image"),
    (["--model", "tiny_i2v", "--prompt", "p"], "give the start image with --image"),
    (["--model", "tiny", "--prompt", "p", "--last-image", "x.png"], "takes no start image"),
    (["--model", "tiny_i2v", "--prompt", "p", "--last-image", "x.png"],
     "give the start image with --image"),
    (["--model", "tiny", "--prompt", "p", "--guidance", "1,2,3"], "one number, or LOW,HIGH"),
])
def test_argument_errors_are_one_line(args, message, capsys):
  assert _main()(args) == 2
  err = capsys.readouterr().err
  assert message in err and err.count("\n") == 1, err


def test_a_lora_for_another_model_is_refused(loras, capsys):
  assert _main()(["--model", "tiny", "--prompt", "p", "--lora-high", str(loras["i2v_high"])]) == 2
  err = capsys.readouterr().err
  assert "is a LoRA for wan-2.2-i2v-tiny-high-noise" in err and err.count("\n") == 1


@pytest.mark.slow
def test_an_i2v_sample_starts_from_its_image_with_the_lora_on_its_expert(loras, tmp_path):
  """Image-to-video through the command; text-to-video from a run (`--run`, the README's
  command), twice with the same bytes, is in test_launch's demo test."""
  image = tmp_path / "start.png"
  iio.imwrite(image, np.full((48, 40, 3), 200, np.uint8))
  r = sample("--model", "tiny_i2v", "--lora-high", loras["i2v_high"], "--prompt", "a ball",
             "--image", image, "--out", tmp_path / "i2v", *SMALL, "--frames", "1")
  assert r.returncode == 0, r.stderr
  assert iio.imread(Path(r.stdout.split()[-1])).shape == (32, 32, 3)
