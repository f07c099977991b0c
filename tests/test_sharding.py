"""Mesh construction and sharding rules; the 8-device checks run in one subprocess.

The pytest process already started jax with one CPU device, so sharded execution on 8 simulated
devices runs in tests/sharding_worker.py, which prints its results as JSON for the tests here.
The rules themselves need no devices: AbstractMesh gives any mesh shape, even the real 14B model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

import wan_jax
from wan_jax.train.step import mesh as mesh_lib
from wan_jax.train.step import sharding

from helpers import with_devices

AXES = ("data", "fsdp", "tensor")


def abstract_mesh(data: int, fsdp: int, tensor: int) -> AbstractMesh:
  return AbstractMesh((data, fsdp, tensor), AXES)


# ---------------------------------------------------------------- mesh


def test_resolve_sizes_fills_the_free_axis():
  assert mesh_lib.resolve_sizes((-1, 2, 2), 8) == (2, 2, 2)
  assert mesh_lib.resolve_sizes((1, -1, 4), 16) == (1, 4, 4)
  assert mesh_lib.resolve_sizes((2, 2, 2), 8) == (2, 2, 2)


@pytest.mark.parametrize("sizes, count, message", [
    ((-1, 3, 1), 8, "data=-1, fsdp=3, tensor=1: 8 devices are not divisible by 3"),
    ((2, 2, 1), 8, "data=2, fsdp=2, tensor=1 needs 4 devices, but there are 8"),
    ((-1, -1, 1), 8, "at most one"),
    ((0, -1, 1), 8, "positive"),
])
def test_resolve_sizes_errors(sizes, count, message):
  with pytest.raises(ValueError, match=message):
    mesh_lib.resolve_sizes(sizes, count)


def test_make_mesh_on_this_process():
  mesh = mesh_lib.make_mesh()
  assert mesh.axis_names == AXES
  assert dict(mesh.shape) == {"data": jax.device_count(), "fsdp": 1, "tensor": 1}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  with pytest.raises(ValueError, match=f"but there are {jax.device_count()}"):
    mesh_lib.make_mesh(data=1, fsdp=jax.device_count() + 1)


@dataclass(frozen=True)
class FakeGpu:
  id: int
  process_index: int
  platform: str = "gpu"
  device_kind: str = "fake gpu"


def fake_cluster(hosts: int, per_host: int) -> list[FakeGpu]:
  return [FakeGpu(h * per_host + i, h) for h in range(hosts) for i in range(per_host)]


def test_device_grid_keeps_tensor_and_fsdp_inside_a_host():
  grid = mesh_lib.device_grid((2, 2, 2), fake_cluster(hosts=2, per_host=4))
  procs = np.vectorize(lambda d: d.process_index)(grid)
  assert (procs[0] == 0).all() and (procs[1] == 1).all()  # data crosses hosts
  grid = mesh_lib.device_grid((1, 16, 1), fake_cluster(hosts=2, per_host=8))
  procs = np.vectorize(lambda d: d.process_index)(grid)[0, :, 0]
  assert list(procs) == [0] * 8 + [1] * 8  # fsdp groups of 8 stay on one host
  grid = mesh_lib.device_grid((2, 2, 4), fake_cluster(hosts=4, per_host=4))
  procs = np.vectorize(lambda d: d.process_index)(grid)
  assert all(len(set(procs[d, f])) == 1 for d in range(2) for f in range(2))  # tensor in-host
  assert len({d.id for d in grid.flat}) == 16


def test_split_over_granules():
  assert mesh_lib.split_over_granules((2, 2, 2), 4, 2) == ((1, 2, 2), (2, 1, 1))
  assert mesh_lib.split_over_granules((4, 4, 1), 8, 2) == ((2, 4, 1), (2, 1, 1))
  assert mesh_lib.split_over_granules((1, 1, 16), 8, 2) == ((1, 1, 8), (1, 1, 2))
  assert mesh_lib.split_over_granules((3, 1, 1), 2, 3) is None  # falls back to device order


# ---------------------------------------------------------------- rules (no devices needed)


def param_specs(cfg, mesh, **kw) -> dict[tuple[str, ...], tuple[tuple[int, ...], P]]:
  model = nnx.eval_shape(lambda: wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  specs = {}
  for kp, x in jax.tree_util.tree_leaves_with_path(state):
    path = sharding.path_names(kp)
    specs[path] = (x.shape, sharding.param_spec(path, x.shape, mesh, **kw))
  return specs


def shards(spec: P, mesh) -> int:
  sizes = dict(mesh.shape)
  return int(np.prod([sizes[a] for e in spec if e for a in (e if isinstance(e, tuple) else (e,))]))


def assert_valid(path, shape, spec, mesh):
  sizes = dict(mesh.shape)
  assert len(spec) == len(shape), path
  for n, e in zip(shape, spec):
    if e is not None:
      axes = e if isinstance(e, tuple) else (e,)
      assert n % int(np.prod([sizes[a] for a in axes])) == 0, (path, shape, spec)
  if path[0] == "blocks":
    assert spec[0] is None, path  # the stacked layer axis


def test_14b_rules():
  mesh = abstract_mesh(2, 8, 8)
  specs = param_specs(wan_jax.t2v_a14b(), mesh)
  for path, (shape, spec) in specs.items():
    assert_valid(path, shape, spec, mesh)
  for attn in ("self_attn", "cross_attn"):
    for col in ("q", "k", "v"):
      assert specs[("blocks", attn, col, "kernel")][1] == P(None, "fsdp", "tensor")
    assert specs[("blocks", attn, "o", "kernel")][1] == P(None, "tensor", "fsdp")
  assert specs[("blocks", "ffn_in", "kernel")][1] == P(None, "fsdp", "tensor")
  assert specs[("blocks", "ffn_out", "kernel")][1] == P(None, "tensor", "fsdp")
  assert specs[("blocks", "norm3", "weight")][1] == P(None, None)  # 5120 per layer: small
  assert specs[("text_embedding_1", "kernel")][1] == P(None, "fsdp")
  total = sum(np.prod(s) for s, _ in specs.values())
  per_device = sum(np.prod(s) / shards(p, mesh) for s, p in specs.values())
  assert 14.2e9 < total < 14.3e9
  assert per_device < 1.2 * total / 64  # fsdp * tensor = 64: almost everything is split


def test_tensor_axis_only_when_divisible():
  mesh = abstract_mesh(1, 1, 3)
  path = ("blocks", "self_attn", "q", "kernel")
  assert sharding.param_spec(path, (40, 5120, 5120), mesh) == P(None, None, None)
  assert sharding.param_spec(path, (40, 5120, 5121 * 3), mesh) == P(None, None, "tensor")


def test_fsdp_takes_the_largest_divisible_dim():
  mesh = abstract_mesh(1, 4, 1)
  assert sharding.param_spec(("w",), (4096, 1024), mesh) == P("fsdp", None)
  assert sharding.param_spec(("w",), (4098, 1024), mesh) == P(None, "fsdp")
  assert sharding.param_spec(("w",), (4098, 1023), mesh) == P(None, None)
  assert sharding.param_spec(("w",), (100, 100), mesh) == P(None, None)  # small: replicated
  assert sharding.param_spec(("w",), (100, 100), mesh, min_size=0) == P("fsdp", None)
  assert sharding.param_spec(("step",), (), mesh, min_size=0) == P()


@pytest.mark.parametrize("a, b", [("lora_a", "lora_b"), ("a", "b"), ("down", "up")])
def test_lora_factors_never_split_the_rank(a, b):
  mesh = abstract_mesh(1, 8, 4)
  q, o = ("blocks", "self_attn", "q"), ("blocks", "self_attn", "o")
  # Column-parallel q: A [L, in, r] only fsdp; B [L, r, out] tensor (and fsdp) on out.
  assert sharding.param_spec(q + (a,), (40, 5120, 64), mesh) == P(None, "fsdp", None)
  assert sharding.param_spec(q + (b,), (40, 64, 5120), mesh) == P(None, None, ("tensor", "fsdp"))
  # Row-parallel o: A [L, in, r] tensor on in; B [L, r, out] fsdp on out.
  assert sharding.param_spec(o + (a,), (40, 5120, 64), mesh) == P(None, ("tensor", "fsdp"), None)
  assert sharding.param_spec(o + (b,), (40, 64, 5120), mesh) == P(None, None, "fsdp")
  # Rank 512 in a tiny layer would be the largest dim; it still stays whole.
  fsdp_only = abstract_mesh(1, 8, 1)
  assert sharding.param_spec(q + ("lora", a), (40, 256, 512), fsdp_only) == P(None, "fsdp", None)
  assert sharding.param_spec(q + ("lora", b), (40, 512, 256), fsdp_only) == P(None, None, "fsdp")


def test_lora_rank_from_shape_when_names_do_not_say():
  mesh = abstract_mesh(1, 8, 1)
  path = ("blocks", "ffn_in", "lora", "left")
  assert sharding.param_spec(path, (40, 5120, 32), mesh) == P(None, "fsdp", None)
  assert sharding.param_spec(path, (40, 32, 13824), mesh) == P(None, None, "fsdp")


def test_optimizer_leaves_follow_their_param():
  mesh = abstract_mesh(2, 8, 8)
  param = ("blocks", "cross_attn", "o", "kernel")
  shape = (40, 5120, 5120)
  for prefix in [("opt_state", "0", "mu"), ("opt_state", "0", "nu"), ("0", "mu")]:
    assert sharding.param_spec(prefix + param, shape, mesh) == sharding.param_spec(
        param, shape, mesh)
  assert sharding.param_spec(("opt_state", "0", "count"), (), mesh) == P()


def test_path_names_drop_the_variable_value():
  state = nnx.state(wan_jax.WanTransformer(wan_jax.tiny(), rngs=nnx.Rngs(0)), nnx.Param)
  paths = {sharding.path_names(kp) for kp, _ in jax.tree_util.tree_leaves_with_path(state)}
  assert ("blocks", "self_attn", "q", "kernel") in paths
  assert ("head_modulation",) in paths


def test_single_device_helpers():
  mesh = mesh_lib.make_mesh()
  assert sharding.batch_sharding(mesh, 3).spec == P(("data", "fsdp"), None, None)
  assert sharding.replicated(mesh).spec == P()
  batch = sharding.global_batch_from_local({"x": np.arange(12.0).reshape(4, 3)}, mesh)
  np.testing.assert_array_equal(np.asarray(batch["x"]), np.arange(12.0).reshape(4, 3))
  state = nnx.state(wan_jax.WanTransformer(wan_jax.tiny(), rngs=nnx.Rngs(0)), nnx.Param)
  placed = sharding.shard_state(state, sharding.state_shardings(state, mesh))
  assert all(x.sharding.mesh == mesh for x in jax.tree_util.tree_leaves(placed))


# ---------------------------------------------------------------- 8 simulated devices


@pytest.fixture(scope="module")
def eight() -> dict:
  worker = Path(__file__).with_name("sharding_worker.py")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env["XLA_FLAGS"] = with_devices(env.get("XLA_FLAGS", ""), 8)
  done = subprocess.run([sys.executable, str(worker)], env=env, capture_output=True, text=True,
                        timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-4000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_eight_make_mesh(eight):
  m = eight["mesh"]
  assert m["devices"] == 8
  assert m["filled"] == {"data": 2, "fsdp": 2, "tensor": 2}
  assert m["all_data"] == {"data": 8, "fsdp": 1, "tensor": 1}
  assert "8 devices are not divisible by 3" in m["bad_error"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["data2_fsdp2_tensor2", "data8", "fsdp8"])
def test_eight_specs_valid_and_placed(eight, name):
  result = eight["model"][name]
  for path, leaf in result["specs"].items():
    assert leaf["even"], path
    assert leaf["placed"] == leaf["spec"], path
    if path.startswith("blocks/"):
      assert leaf["spec"][0] is None, path
  assert result["batch_spec"] == [["data", "fsdp"], None, None, None, None]
  assert result["local_batch_ok"]
  assert result["default_all_replicated"]  # the tiny model is under the default min_size


@pytest.mark.slow
def test_eight_megatron_layout(eight):
  specs = eight["model"]["data2_fsdp2_tensor2"]["specs"]
  for attn in ("self_attn", "cross_attn"):
    for col in ("q", "k", "v"):
      assert specs[f"blocks/{attn}/{col}/kernel"]["spec"] == [None, "fsdp", "tensor"]
    assert specs[f"blocks/{attn}/o/kernel"]["spec"] == [None, "tensor", "fsdp"]
  assert specs["blocks/ffn_in/kernel"]["spec"] == [None, "fsdp", "tensor"]
  assert specs["blocks/ffn_out/kernel"]["spec"] == [None, "tensor", "fsdp"]
  fsdp8 = eight["model"]["fsdp8"]["specs"]
  assert fsdp8["blocks/self_attn/q/kernel"]["spec"] == [None, "fsdp", None]
  assert all(e is None for leaf in eight["model"]["data8"]["specs"].values()
             for e in leaf["spec"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["data2_fsdp2_tensor2", "data8", "fsdp8"])
def test_eight_forward_matches_one_device(eight, name):
  assert eight["model"][name]["rel"] < 1e-5


@pytest.mark.slow
def test_eight_gradient_matches_one_device(eight):
  assert eight["grad"]["rel"] < 1e-5


@pytest.mark.slow
def test_eight_optimizer_state(eight):
  opt = eight["model"]["optimizer"]
  assert opt["moments_match"] and opt["placed_ok"]
  assert all(spec == [] for spec in opt["scalar_specs"])


@pytest.mark.slow
def test_eight_memory_plan_is_per_device(eight):
  """The planner compares per-device figures: replicated weights count whole on each device,
  weights sharded eight ways about an eighth (small arrays stay replicated)."""
  plan, total = eight["plan"], eight["plan"]["total"]
  assert plan["data8"]["device_bytes"] == total
  assert plan["fsdp8"]["device_bytes"] < total / 4
  assert plan["fsdp8"]["arguments"] < plan["data8"]["arguments"] / 4
