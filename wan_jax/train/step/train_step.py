"""The train step: one `jax.jit` with explicit shardings and donated state.

(trainable, opt_state, frozen, batch, key, t_low, t_high) -> (trainable, opt_state, metrics)

The same compiled step serves both experts (they share one graph and one set of shapes); the
expert is chosen by which weights are passed and by the timestep range [t_low, t_high). A step
whose loss, gradients or updated weights are not finite returns the old weights and optimizer
state unchanged and reports finite=False, so a bad batch is counted, never applied.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from wan_jax.model.vae import normalize_latents, sample_posterior
from wan_jax.tasks import TEXT_TO_VIDEO, Task
from wan_jax.train.step.objective import masked_mse, noisy_latents
from wan_jax.train.step.sharding import (
  MIN_SHARD_SIZE,
  batch_sharding,
  replicated,
  streamed,
  tree_shardings,
)
from wan_jax.train.step.timesteps import sample_timesteps


TASK_KEY = 0x7A5C  # the task's draws fold this into the step key (the rest draw as before)


@dataclasses.dataclass(frozen=True)
class StepSettings:
  sampling: str
  shift: float
  logit_mean: float
  logit_std: float
  sample_posterior: bool
  latents_mean: tuple[float, ...]  # the VAE's latent normalisation (from its config)
  latents_std: tuple[float, ...]
  task: Task = TEXT_TO_VIDEO  # what the model reads besides the latents (its batch keys)

  @classmethod
  def from_config(cls, train: ml_collections.ConfigDict, vae: Any,
                  task: Task = TEXT_TO_VIDEO) -> StepSettings:
    """From the config's `train` section and the VAE's config (its latent normalisation)."""
    return cls(sampling=str(train.timestep_sampling), shift=float(train.shift),
               logit_mean=float(train.logit_mean), logit_std=float(train.logit_std),
               sample_posterior=bool(train.sample_posterior),
               latents_mean=tuple(vae.latents_mean), latents_std=tuple(vae.latents_std),
               task=task)


def step_keys(seed: int, step: int) -> jax.Array:
  """The step's PRNG key: a pure function of (seed, step), so a resumed run draws the same."""
  return jax.random.fold_in(jax.random.key(seed), step)


def loss_and_grads(graphdef: nnx.GraphDef, trainable: nnx.State, frozen: nnx.State,
                   batch: dict[str, jax.Array], key: jax.Array, t_low: jax.Array,
                   t_high: jax.Array, s: StepSettings) -> tuple[jax.Array, dict, Any]:
  k_post, k_t, k_noise = jax.random.split(key, 3)
  mean, logvar = batch["latent_mean"], batch["latent_logvar"]
  z = sample_posterior(mean, logvar, k_post) if s.sample_posterior else mean
  x0 = normalize_latents(z, s.latents_mean, s.latents_std)
  b = x0.shape[0]
  t = sample_timesteps(k_t, b, t_low, t_high, s.sampling, shift=s.shift,
                       logit_mean=s.logit_mean, logit_std=s.logit_std)
  noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
  x_t, target = noisy_latents(x0, noise, t)
  # image-to-video: the encoded first frame as a condition, or (TI2V) in place of x_t's first
  mean_x0 = normalize_latents(mean, s.latents_mean, s.latents_std)  # unused ones compile away
  inputs = s.task.model_inputs(batch, mean_x0, x_t, t, jax.random.fold_in(key, TASK_KEY))

  def loss_fn(trainable):
    model = nnx.merge(graphdef, trainable, frozen)
    pred = model(inputs.latents, inputs.timestep, batch["context"], inputs.condition)
    loss, per_item = masked_mse(pred, target, inputs.weights, batch["loss_multiplier"])
    return loss, {"per_item": per_item, "t": t}

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
  return loss, aux, grads


def all_finite(tree: Any) -> jax.Array:
  """True when every element of every floating array in `tree` is finite (one scalar)."""
  checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.bool_(True)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    settings: StepSettings, mesh: jax.sharding.Mesh, trainable: nnx.State,
                    opt_state: Any, frozen: nnx.State, min_size: int = MIN_SHARD_SIZE,
                    stream: bool = False) -> Callable:
  """The compiled step for this mesh; state arguments are donated (updated in place). The batch
  holds `settings.task.batch_ndims`' arrays. With `stream`, the frozen block weights are taken
  in pinned host memory (sharding.streamed) and the layer scan fetches them block by block."""

  def step(trainable, opt_state, frozen, batch, key, t_low, t_high):
    loss, aux, grads = loss_and_grads(graphdef, trainable, frozen, batch, key, t_low, t_high,
                                      settings)
    grad_norm = optax.global_norm(grads)
    grads_finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    safe = jax.tree.map(lambda g: jnp.where(grads_finite, g, 0.0), grads)
    updates, new_opt = tx.update(safe, opt_state, trainable)
    new_trainable = optax.apply_updates(trainable, updates)
    # An update can turn weights non-finite on its own (a NaN learning rate, an overflow): the
    # new weights are checked too, on the device, so a bad step is never applied.
    finite = grads_finite & all_finite(new_trainable)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite,
               "t_mean": jnp.mean(aux["t"])}
    return keep(new_trainable, trainable), keep(new_opt, opt_state), metrics

  rep = replicated(mesh)
  state_sh = tuple(tree_shardings(t, mesh, min_size=min_size)
                   for t in (trainable, opt_state, frozen))
  if stream:
    state_sh = (*state_sh[:2], streamed(state_sh[2]))
  batch_sh = {k: batch_sharding(mesh, n) for k, n in settings.task.batch_ndims.items()}
  return jax.jit(step, in_shardings=(*state_sh, batch_sh, rep, rep, rep),
                 out_shardings=(state_sh[0], state_sh[1], rep), donate_argnums=(0, 1))
