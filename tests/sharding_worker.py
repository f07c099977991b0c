"""Sharding checks on 8 simulated CPU devices; prints one JSON object for test_sharding.py.

Runs in its own process: the device count is fixed when jax starts, and the pytest process has
already started it with one CPU device.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ["JAX_PLATFORMS"] = "cpu"

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import wan_jax
from wan_jax.train.step import mesh as mesh_lib
from wan_jax.train.step import sharding

MESHES = {"data2_fsdp2_tensor2": (2, 2, 2), "data8": (8, 1, 1), "fsdp8": (1, 8, 1)}
BATCH = 8  # divisible by data * fsdp of every mesh above


def spec_str(spec) -> list:
  return [list(e) if isinstance(e, tuple) else e for e in spec]


def mesh_checks() -> dict:
  out = {"devices": jax.device_count(),
         "filled": dict(mesh_lib.make_mesh(fsdp=2, tensor=2).shape),
         "all_data": dict(mesh_lib.make_mesh().shape)}
  try:
    mesh_lib.make_mesh(data=-1, fsdp=3)
    out["bad_error"] = None
  except ValueError as e:
    out["bad_error"] = str(e)
  return out


def inputs(cfg):
  keys = jax.random.split(jax.random.key(0), 3)
  latents = jax.random.normal(keys[0], (BATCH, 3, 4, 6, cfg.in_channels))
  timestep = jax.random.uniform(keys[1], (BATCH,), minval=0.0, maxval=1000.0)
  context = jax.random.normal(keys[2], (BATCH, 5, cfg.text_dim))
  return latents, timestep, context


def forward(graphdef, state, latents, timestep, context):
  return nnx.merge(graphdef, state)(latents, timestep, context)


def spec_report(state, shardings, mesh) -> dict:
  """Per leaf: spec, whether its sharded dims divide evenly, and whether the layer axis is kept."""
  sizes = dict(mesh.shape)
  report = {}
  leaves = jax.tree_util.tree_leaves_with_path(state)
  for (kp, x), s in zip(leaves, jax.tree_util.tree_leaves(shardings)):
    path = sharding.path_names(kp)
    spec = tuple(s.spec) + (None,) * (x.ndim - len(s.spec))
    even = all(n % int(np.prod([sizes[a] for a in (e if isinstance(e, tuple) else (e,))])) == 0
               for n, e in zip(x.shape, spec) if e is not None)
    report["/".join(path)] = {"shape": list(x.shape), "spec": spec_str(spec), "even": even,
                              "placed": spec_str(x.sharding.spec) if hasattr(x, "sharding")
                              else None}
  return report


def model_checks() -> dict:
  cfg = wan_jax.tiny().replace(param_dtype="float32", compute_dtype="float32")
  model = wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  x = inputs(cfg)
  fwd = jax.jit(forward, static_argnums=0)
  reference = np.asarray(fwd(graphdef, state, *x))
  out = {}
  for name, sizes in MESHES.items():
    mesh = mesh_lib.make_mesh(*sizes)
    shardings = sharding.state_shardings(state, mesh, min_size=0)
    placed = sharding.shard_state(state, shardings)
    batch = [jax.device_put(a, sharding.batch_sharding(mesh, a.ndim)) for a in x]
    got = np.asarray(fwd(graphdef, placed, *batch))
    rel = float(np.max(np.abs(got - reference)) / np.max(np.abs(reference)))
    local = sharding.global_batch_from_local([np.asarray(a) for a in x], mesh)
    out[name] = {
        "rel": rel,
        "specs": spec_report(placed, shardings, mesh),
        "batch_spec": spec_str(batch[0].sharding.spec),
        "local_batch_ok": all(np.array_equal(np.asarray(a), np.asarray(b))
                              and a.sharding.is_equivalent_to(b.sharding, a.ndim)
                              for a, b in zip(local, batch)),
        "default_all_replicated": all(
            all(e is None for e in s.spec)
            for s in jax.tree_util.tree_leaves(sharding.state_shardings(state, mesh))),
    }
  out["optimizer"] = optimizer_checks(model, MESHES["data2_fsdp2_tensor2"])
  return out


def optimizer_checks(model, sizes) -> dict:
  """AdamW moments get their parameter's spec; step counts are replicated."""
  mesh = mesh_lib.make_mesh(*sizes)
  opt = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
  opt_state = nnx.state(opt)
  shardings = sharding.state_shardings(opt_state, mesh, min_size=0)
  params = sharding.state_shardings(nnx.state(model, nnx.Param), mesh, min_size=0)
  param_specs = {sharding.path_names(kp): s.spec
                 for kp, s in jax.tree_util.tree_leaves_with_path(params)}
  moments_match, scalars = True, []
  for kp, s in jax.tree_util.tree_leaves_with_path(shardings):
    path = sharding.path_names(kp)
    if "mu" in path or "nu" in path:
      i = path.index("mu" if "mu" in path else "nu")
      moments_match &= param_specs[path[i + 1:]] == s.spec
    else:
      scalars.append(spec_str(s.spec))
  placed = sharding.shard_state(opt_state, shardings)
  return {"moments_match": bool(moments_match), "scalar_specs": scalars,
          "placed_ok": all(a.sharding.is_equivalent_to(s, a.ndim) for a, s in zip(
              jax.tree_util.tree_leaves(placed), jax.tree_util.tree_leaves(shardings)))}


def grad_check() -> dict:
  """A sharded gradient equals the 1-device one (the FSDP/tensor reductions are right)."""
  cfg = wan_jax.tiny().replace(param_dtype="float32", compute_dtype="float32")
  graphdef, state = nnx.split(wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(0)))
  x = inputs(cfg)
  loss = lambda st, *a: jnp.mean(forward(graphdef, st, *a) ** 2)
  grad = jax.jit(jax.grad(loss))
  reference = grad(state, *x)
  mesh = mesh_lib.make_mesh(*MESHES["data2_fsdp2_tensor2"])
  placed = sharding.shard_state(state, sharding.state_shardings(state, mesh, min_size=0))
  got = grad(placed, *[jax.device_put(a, sharding.batch_sharding(mesh, a.ndim)) for a in x])
  rel = max(float(np.max(np.abs(np.asarray(g) - np.asarray(r))) / (np.max(np.abs(r)) + 1e-30))
            for g, r in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(reference)))
  return {"rel": rel}


def plan_checks() -> dict:
  """The memory planner's figures are per device: the compiled step's arguments and the idle
  expert's bytes shrink when the weights are sharded (fsdp8) and not when replicated (data8)."""
  from wan_jax.train.step import memory_plan
  cfg = wan_jax.tiny().replace(param_dtype="float32", compute_dtype="float32")
  graphdef, state = nnx.split(wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(0)))
  loss = lambda st, *a: jnp.mean(forward(graphdef, st, *a) ** 2)
  out = {"total": sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state))}
  for name in ("data8", "fsdp8"):
    mesh = mesh_lib.make_mesh(*MESHES[name])
    shardings = sharding.state_shardings(state, mesh, min_size=0)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            state, shardings)
    batch = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding.batch_sharding(mesh, a.ndim))
             for a in inputs(cfg)]
    compiled = jax.jit(jax.grad(loss)).lower(abstract, *batch).compile()
    out[name] = {"device_bytes": memory_plan.device_bytes(abstract),
                 "arguments": memory_plan.StepMemory.of(compiled).arguments}
  return out


if __name__ == "__main__":
  print(json.dumps({"mesh": mesh_checks(), "model": model_checks(), "grad": grad_check(),
                    "plan": plan_checks()}))
