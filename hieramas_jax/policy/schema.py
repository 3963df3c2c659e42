"""The checkpoint schema of a policy: what stage 1 and stage 2 save, and how any reader restores it.

Stage 1 saves ``selector_train_state`` (training state, kept parameters, option
embeddings), stage 2 ``classifier_train_state``, both with
``checkpoint_metadata`` (schema version, the spec as JSON, the run's config).
Schema 1 (before the policy spec) had no option embeddings and no spec: it is
read from the saved config. A newer schema fails with one line naming its writer.
"""

from __future__ import annotations

import pathlib
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import hieramas_jax
from hieramas_jax import checkpointing
from hieramas_jax.policy.spec import PolicyLoadError, PolicySpec, selector_parts

SCHEMA_VERSION = 2
SCHEMA_KEY, SPEC_KEY = "policy_schema", "policy_spec"  # metadata keys; schema 1 had neither
STAGE1, STAGE2 = "stage1", "stage2"


# ---------------------------------------------------------------------------
# The checkpoint schema (stage 1: selector; stage 2: classifier)
# ---------------------------------------------------------------------------


def checkpoint_dir(workdir: str | pathlib.Path, stage: str) -> pathlib.Path:
  return pathlib.Path(workdir).absolute() / "checkpoints" / stage


def selector_train_state(params, opt_state, baseline, best_params, best_val, option_emb) -> dict[str, Any]:
  """Stage 1's checkpointed state: training state, the kept (best) parameters, the option embeddings."""
  return {"params": params, "opt_state": opt_state, "baseline": jnp.asarray(baseline, jnp.float32),
          "best_params": best_params, "best_val": jnp.asarray(best_val, jnp.float32),
          "option_emb": jnp.asarray(option_emb, jnp.float32)}


def classifier_train_state(params, opt_state, best_params, best_auc) -> dict[str, Any]:
  """Stage 2's checkpointed state."""
  return {"params": params, "opt_state": opt_state, "best_params": best_params,
          "best_auc": jnp.asarray(best_auc, jnp.float32)}


def checkpoint_metadata(spec: PolicySpec, stage: str, step: int, config: ml_collections.ConfigDict | None,
                        history: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
  meta = {"stage": 1 if stage == STAGE1 else 2, "step": int(step), "history": list(history),
          "encoder_id": spec.encoder_id, "roles": list(spec.roles), SCHEMA_KEY: SCHEMA_VERSION,
          SPEC_KEY: spec.to_json()}
  if stage == STAGE1:
    meta["model_names"] = list(spec.model_names)
  if config is not None:
    meta["config"] = config.to_dict()
  return meta


def written_by(meta: Mapping[str, Any]) -> str:
  """'hieramas_jax X (policy schema N)' of a checkpoint's metadata."""
  version = (meta.get("versions") or {}).get("hieramas_jax", "unknown")
  return f"hieramas_jax {version} (policy schema {meta.get(SCHEMA_KEY, 1)})"


def schema_of(meta: Mapping[str, Any], directory: pathlib.Path | str) -> int:
  """The schema of a checkpoint; PolicyLoadError (one line) when this version cannot read it."""
  schema = meta.get(SCHEMA_KEY, 1)
  if not isinstance(schema, int) or not 1 <= schema <= SCHEMA_VERSION:
    raise PolicyLoadError(f"the checkpoint in {directory} was written by {written_by(meta)}; this is hieramas_jax "
                          f"{hieramas_jax.__version__}, which reads policy schemas 1-{SCHEMA_VERSION}: load it with "
                          "the version that wrote it or train again")
  return schema


def optimizer_template(params) -> Any:
  """The optimizer state's structure (hyperparameters do not change it): a restore target or a fresh state."""
  from hieramas_jax.train import learner  # pylint: disable=g-import-not-at-top  (no import cycle with train)
  return jax.eval_shape(learner.make_optimizer(1e-3, 0.0, 1.0).init, params)


def restore_train_state(ckpt: checkpointing.Checkpointer, template: Mapping[str, Any],
                        sharding: jax.sharding.Sharding | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """(state, metadata) of the newest readable step, restored into ``template``'s structure placed with ``sharding``.

  A schema-1 stage-1 checkpoint has no ``option_emb``: it is left out of the
  returned state. A newer schema raises PolicyLoadError naming its writer.
  """
  meta = ckpt.metadata()
  if schema_of(meta, ckpt.directory) < 2:
    template = {k: v for k, v in template.items() if k != "option_emb"}
  state, meta = ckpt.restore(checkpointing.abstract_tree(dict(template), sharding))
  return dict(state), meta


def selector_template(spec: PolicySpec):
  graphdef, params = selector_parts(spec, abstract=True)
  m, d = len(spec.model_names), spec.embedding_dim
  template = selector_train_state(params, optimizer_template(params), np.zeros(len(spec.roles), np.float32), params,
                                  0.0, np.zeros((m + 1, d), np.float32))
  return graphdef, template


def _spec_from_legacy(meta: Mapping[str, Any], directory: pathlib.Path, embedding_dim: int) -> PolicySpec:
  """The spec of a schema-1 checkpoint, from the config in its metadata (checked against its pool and roles)."""
  from hieramas_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from hieramas_jax.train import environment  # pylint: disable=g-import-not-at-top

  if not isinstance(meta.get("config"), dict):
    raise PolicyLoadError(f"the stage-1 checkpoint in {directory} has no config in its metadata (written by "
                          f"{written_by(meta)}, not by launch.train); train again with launch.train")
  config = config_lib.from_saved(meta["config"])
  roles, specs = environment.load_task(config).roles, environment.pool_specs(config)
  if meta.get("model_names") not in (None, [s.name for s in specs]):
    raise ValueError(f"the stage-1 checkpoint in {directory} was trained for models {meta.get('model_names')}, "
                     f"not {[s.name for s in specs]}; use the same pool or a fresh workdir")
  if meta.get("roles") not in (None, [r.name for r in roles]):
    raise ValueError(f"the stage-1 checkpoint in {directory} was trained for roles {meta.get('roles')}, "
                     f"not {[r.name for r in roles]}; use the same task or a fresh workdir")
  return PolicySpec.from_config(config, roles, specs, meta.get("encoder_id") or "", embedding_dim)


def read_metadata(workdir: str | pathlib.Path) -> dict[str, Any]:
  """The stage-1 metadata of a workdir (no array read); FileNotFoundError when it holds no trained selector."""
  directory = checkpoint_dir(workdir, STAGE1)
  if not directory.is_dir():  # checked first: opening a Checkpointer would create the folder
    raise FileNotFoundError(f"no trained HieraMAS in {pathlib.Path(workdir).absolute()}: {directory} does not exist; "
                            f"train first with python -m launch.train --config=<config> --workdir={workdir}")
  with checkpointing.Checkpointer(directory) as ckpt:
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f"no trained selector in {workdir}: {directory} holds no checkpoint; run stage 1 "
                              "(launch.train with stages='both' or 'stage1')")
    return ckpt.metadata()


def read_spec(workdir: str | pathlib.Path, *, embedding_dim: int | None = None) -> tuple[PolicySpec, dict[str, Any]]:
  """(spec, stage-1 metadata) of a workdir, without reading any array.

  ``embedding_dim`` is needed for schema-1 workdirs (their spec does not record it).
  """
  meta = read_metadata(workdir)
  directory = checkpoint_dir(workdir, STAGE1)
  if schema_of(meta, directory) >= 2:
    return PolicySpec.from_json(meta[SPEC_KEY]), meta
  if embedding_dim is None:
    raise PolicyLoadError(f"the checkpoint in {directory} was written by {written_by(meta)}, before policies stored "
                          "their spec and option embeddings; load it through HieraMAS.from_workdir (or pass encoder=)")
  return _spec_from_legacy(meta, directory, embedding_dim), meta
