"""Models of a training config and best-checkpoint loading, through the policy's schema (``hieramas_jax.policy``).

Parameters travel as pure dicts (``nnx.to_pure_dict``) with a separate graphdef,
so jitted functions take plain pytrees and orbax saves plain arrays.
"""

from __future__ import annotations

import pathlib
from typing import Any, Sequence

import ml_collections
import numpy as np

from hieramas_jax import checkpointing, policy


def build_selector(config: ml_collections.ConfigDict, text_dim: int, profile_dim: int):
  """(graphdef, seeded initial params) of the config's LLM selector."""
  return policy.split_module(policy.new_selector(config.selector.num_proposers, text_dim, profile_dim,
                                                 policy.selector_hparams(config), config.seed))


def build_classifier(config: ml_collections.ConfigDict, num_roles: int, query_dim: int):
  """(graphdef, seeded initial params) of the config's graph classifier."""
  return policy.split_module(policy.new_classifier(config.gcn.get("model", "gcn"), num_roles, query_dim,
                                                   policy.classifier_hparams(config), config.seed))


def load_selector(workdir: str | pathlib.Path, config: ml_collections.ConfigDict, text_dim: int, profile_dim: int,
                  *, model_names: Sequence[str] | None = None, roles: Sequence[str] | None = None,
                  sharding=None) -> tuple[Any, Any, dict]:
  """(graphdef, best params, metadata) of the stage-1 selector in ``workdir``.

  Raises FileNotFoundError when there is none (never a silent fresh selector),
  and ValueError when it was trained for other models or roles.
  """
  graphdef, params = policy.abstract_module(lambda: policy.new_selector(
      config.selector.num_proposers, text_dim, profile_dim, policy.selector_hparams(config), config.seed))
  ckpt_dir = policy.checkpoint_dir(workdir, policy.STAGE1)
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
    num_options = len(meta.get("model_names", [])) + 1
    template = policy.selector_train_state(params, policy.optimizer_template(params),
                                           np.zeros(len(meta.get("roles", [0])), np.float32), params, 0.0,
                                           np.zeros((num_options, profile_dim), np.float32))
    restored, meta = policy.restore_train_state(ckpt, template, sharding)
  return graphdef, restored["best_params"], meta
