"""Model construction and best-checkpoint loading, shared by training and inference.

Parameters travel as pure dicts (``nnx.to_pure_dict``) with a separate graphdef,
so jitted functions take plain pytrees and orbax saves plain arrays.
"""

from __future__ import annotations

import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from hieramas_jax import checkpointing
from hieramas_jax.models import gcn
from hieramas_jax.models import selector as sel
from hieramas_jax.train import learner


def _selector(config: ml_collections.ConfigDict, text_dim: int, profile_dim: int) -> sel.LLMSelector:
  c = config.selector
  return sel.LLMSelector(c.num_proposers, text_dim, profile_dim, hidden_dim=c.hidden_dim,
                         init_skip_bias=c.init_skip_bias, skip_head=c.skip_head, input_scale=c.input_scale,
                         rngs=nnx.Rngs(config.seed))


def _classifier(config: ml_collections.ConfigDict, num_roles: int, query_dim: int) -> gcn.GraphClassifier:
  c = config.gcn
  return gcn.GraphClassifier(num_roles, query_dim, role_dim=c.role_dim, hidden_dim=c.hidden_dim,
                             num_layers=c.num_layers, mlp_dim=c.mlp_dim, rngs=nnx.Rngs(config.seed + 100))


def _split(model):
  graphdef, state = nnx.split(model)
  return graphdef, nnx.to_pure_dict(state)


def build_selector(config: ml_collections.ConfigDict, text_dim: int, profile_dim: int):
  return _split(_selector(config, text_dim, profile_dim))


def build_classifier(config: ml_collections.ConfigDict, num_roles: int, query_dim: int):
  return _split(_classifier(config, num_roles, query_dim))


def _abstract(build):
  """graphdef and ShapeDtypeStruct params of a module, without computing any initial value."""
  return _split(nnx.eval_shape(build))


def abstract_selector(config: ml_collections.ConfigDict, text_dim: int, profile_dim: int):
  return _abstract(lambda: _selector(config, text_dim, profile_dim))


def abstract_classifier(config: ml_collections.ConfigDict, num_roles: int, query_dim: int):
  return _abstract(lambda: _classifier(config, num_roles, query_dim))


def selector_state_tree(params, opt_state, baseline, best_params, best_val):
  return {"params": params, "opt_state": opt_state, "baseline": jnp.asarray(baseline, jnp.float32),
          "best_params": best_params, "best_val": jnp.asarray(best_val, jnp.float32)}


def classifier_state_tree(params, opt_state, best_params, best_auc):
  return {"params": params, "opt_state": opt_state, "best_params": best_params,
          "best_auc": jnp.asarray(best_auc, jnp.float32)}


def _template_optimizer_state(params):
  # Only the structure matters for a restore target; hyper-parameters do not change it.
  return jax.eval_shape(learner.make_optimizer(1e-3, 0.0, 1.0).init, params)


def load_selector(workdir: str | pathlib.Path, config: ml_collections.ConfigDict, text_dim: int, profile_dim: int,
                  *, model_names: Sequence[str] | None = None, roles: Sequence[str] | None = None,
                  sharding=None) -> tuple[Any, Any, dict]:
  """(graphdef, best params, metadata) of the stage-1 selector in ``workdir``.

  Raises FileNotFoundError when there is none (never a silent fresh selector),
  and ValueError when it was trained for other models or roles.
  """
  graphdef, params = abstract_selector(config, text_dim, profile_dim)
  ckpt_dir = pathlib.Path(workdir) / "checkpoints" / "stage1"
  with checkpointing.Checkpointer(ckpt_dir) as ckpt:
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f"no trained selector: {ckpt_dir} holds no checkpoint; run stage 1 first "
                              "(stages='both' or 'stage1')")
    meta = ckpt.metadata()
    if model_names is not None and meta.get("model_names") != list(model_names):
      raise ValueError(f"the stage-1 checkpoint in {ckpt_dir} was trained for models {meta.get('model_names')}, "
                       f"not {list(model_names)}; use the same pool or a fresh workdir")
    if roles is not None and meta.get("roles") != list(roles):
      raise ValueError(f"the stage-1 checkpoint in {ckpt_dir} was trained for roles {meta.get('roles')}, "
                       f"not {list(roles)}; use the same task or a fresh workdir")
    template = {"params": params, "opt_state": _template_optimizer_state(params),
                "baseline": jax.ShapeDtypeStruct((len(meta.get("roles", [0])),), jnp.float32),
                "best_params": params, "best_val": jax.ShapeDtypeStruct((), jnp.float32)}
    restored, meta = ckpt.restore(checkpointing.abstract_tree(template, sharding))
  return graphdef, restored["best_params"], meta


def load_classifier(workdir: str | pathlib.Path, config: ml_collections.ConfigDict, num_roles: int, query_dim: int,
                    *, sharding=None) -> tuple[Any, Any, dict]:
  """(graphdef, best params, metadata) of the stage-2 graph classifier in ``workdir``."""
  graphdef, params = abstract_classifier(config, num_roles, query_dim)
  ckpt_dir = pathlib.Path(workdir) / "checkpoints" / "stage2"
  with checkpointing.Checkpointer(ckpt_dir) as ckpt:
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f"no trained graph classifier: {ckpt_dir} holds no checkpoint; run stage 2 first")
    template = {"params": params, "opt_state": _template_optimizer_state(params), "best_params": params,
                "best_auc": jax.ShapeDtypeStruct((), jnp.float32)}
    restored, meta = ckpt.restore(checkpointing.abstract_tree(template, sharding))
  return graphdef, restored["best_params"], meta
