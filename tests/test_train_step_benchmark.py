"""benchmarks/train_step.py --reduced (ours and the PyTorch peer) for 2 steps, in this process:
the report's fields exist and are sane. No timing is asserted, only that times are positive.

The PyTorch peer is checked where it must match ours for the comparison to be fair: the same
architecture (parameter counts), the same ten adapted linears, the same loss reduction.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import wan_jax
import flops
from wan_jax.model.lora import add_lora, count_lora_params
from wan_jax.train.step.objective import masked_mse

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
# The names for the ten linears per block, written out here.
DIFFUSERS_TARGETS = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q",
                     "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2"]


def load(name: str):
  if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))  # train_step imports its sibling torch_reference
  spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture
def keep_threads(monkeypatch):
  """The benchmark pins both frameworks to one CPU thread; later tests get theirs back (JAX's
  backend starts here first, so the flag the benchmark sets never reaches it)."""
  jax.devices()
  monkeypatch.setenv("XLA_FLAGS", "")
  threads = torch.get_num_threads()
  yield
  torch.set_num_threads(threads)


@pytest.mark.slow
def test_reduced_run_with_torch(tmp_path, keep_threads):
  bench = load("train_step")
  out = tmp_path / "report.json"
  returned = bench.main(["--reduced", "--torch", "--steps", "2", "--warmup", "0",
                         "--cases", "a", "c", "--rank", "4", "--out", str(out)])
  report = json.loads(out.read_text())
  assert report["cases"] == json.loads(json.dumps(returned["cases"]))
  assert report["benchmark"] == "train_step" and report["commit"]
  assert report["jax_version"] == jax.__version__ and report["device_kind"]
  assert report["peak_flops_per_s"] > 0
  assert report["config"]["plan"] == "full" and report["cases"][0]["ours"]["plan"] == "full" and report["config"]["rank"] == 4
  assert report["torch"]["diffusers_version"] and report["torch"]["torch_version"]

  cfg = wan_jax.tiny()
  assert [c["case"] for c in report["cases"]] == ["a", "c"]
  for case in report["cases"]:
    tokens = flops.token_count(cfg, case["frames"], case["height"], case["width"])
    assert case["tokens"] == tokens
    assert case["model_flops"] == flops.step_flops(cfg, tokens).step
    ours, theirs = case["ours"], case["torch"]
    assert ours["compile_s"] > 0 and ours["first_step_s"] > 0
    for side in (ours, theirs):
      assert len(side["step_s"]) == 2 and all(t > 0 for t in side["step_s"])
      assert side["median_s"] == pytest.approx(float(np.median(side["step_s"])))
      assert side["mfu"] == pytest.approx(
          case["model_flops"] / side["median_s"] / report["peak_flops_per_s"])
      assert side["tokens_per_s"] == pytest.approx(tokens / side["median_s"])
      assert math.isfinite(side["loss"]) and side["loss"] > 0
    assert ours["finite"]
    assert case["ratio_ours_over_torch"] == pytest.approx(ours["median_s"] / theirs["median_s"])


@pytest.mark.slow
def test_reduced_run_ours_only_prints_a_table(capsys, keep_threads):
  bench = load("train_step")
  report = bench.main(["--reduced", "--steps", "1", "--warmup", "0", "--cases", "c",
                       "--remat", "none", "--attention", "xla"])
  printed = capsys.readouterr().out.strip().splitlines()
  assert printed[0].startswith("memory plan: none (the fastest; named by --plan")
  assert printed[1].startswith("ours 128x128 image: compile")  # progress, case by case
  json_lines = [line for line in printed if line.startswith("{")]
  assert json.loads(json_lines[0])["cases"][0]["case"] == "c"  # a JSON line when no --out
  assert printed[-1].startswith(report["cases"][0]["label"])  # the table comes last
  assert "torch" not in report["cases"][0]
  assert report["config"]["attention_resolved"] == "xla"


def test_peer_matches_our_architecture_targets_and_loss():
  ref = load("torch_reference")
  assert ref.diffusers_targets() == DIFFUSERS_TARGETS
  cfg = wan_jax.tiny()
  model, params = ref.build_model(cfg, rank=4, alpha=4.0, dtype=torch.float32,
                                  device=torch.device("cpu"))
  ours = wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(0))
  base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
  assert base == sum(x.size for x in jax.tree.leaves(nnx.state(ours, nnx.Param)))
  add_lora(ours, 4, 4.0)
  assert sum(p.numel() for p in params) == count_lora_params(ours)
  assert all(p.dtype == torch.float32 for p in params)

  rng = np.random.default_rng(0)
  pred, target = rng.standard_normal((2, 3, 4, 6, 16)), rng.standard_normal((2, 3, 4, 6, 16))
  weights = rng.random((2, 3, 4, 6)) * (np.arange(2) > 0)[:, None, None, None]  # item 0 empty
  mult = np.array([1.0, 0.5])
  want = float(masked_mse(pred, target, weights, mult)[0])
  cf = lambda a: torch.from_numpy(np.moveaxis(a, -1, 1).copy()).float()
  got = ref.masked_mse(cf(pred), cf(target), torch.from_numpy(weights).float(),
                       torch.from_numpy(mult).float())
  assert float(got) == pytest.approx(want, rel=1e-5)
