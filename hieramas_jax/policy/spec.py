"""``PolicySpec``: what a policy's parameters mean, as JSON; and the models it builds (one registry for the GNN)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np
from flax import nnx

from hieramas_jax import graphs
from hieramas_jax.models import gcn
from hieramas_jax.models import selector as sel

_CLASSIFIER_SEED_OFFSET = 100  # the classifier's init stream, apart from the selector's
_POOL_SEED_OFFSET = 2  # the candidate pool's seed (stage 2's data pool uses the same one)


def pool_settings(config: ml_collections.ConfigDict, density_range: Sequence[float] | None = None) -> dict[str, Any]:
  """Seed, size and density range of a config's candidate pool (``density_range`` replaces the candidates')."""
  rng = config.graphs.candidate_density_range if density_range is None else density_range
  return {"seed": int(config.seed) + _POOL_SEED_OFFSET, "size": int(config.graphs.num_candidates),
          "density_range": [float(x) for x in rng]}


def draw_pool(settings: Mapping[str, Any], num_roles: int) -> np.ndarray:
  """The distinct DAGs [K, N, N] that ``pool_settings`` describe (all of them when fewer exist)."""
  return graphs.dag_pool(int(settings["seed"]), num_roles, int(settings["size"]), tuple(settings["density_range"]),
                         allow_fewer=True)


class PolicyLoadError(ValueError):
  """A checkpoint this version cannot read; the message names the version that wrote it."""


# ---------------------------------------------------------------------------
# The spec
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PolicySpec:
  """Everything a policy's parameters mean, as JSON.

  Attributes:
    task: the task name; roles and gives_answer: its roles in order.
    model_names: the pool (option i is model i, option M is ``skip``);
      excluded_models may never be chosen; decision_model answers last.
    option_texts: the texts ``option_emb`` embeds (model profiles, then skip).
    encoder_id, embedding_dim: the text encoder the inputs must come from.
    num_proposers: P proposers (+ one synthesizer) per role.
    seed: the run's seed (initialisation, proposer rotation, random graphs).
    selector, classifier: the models' hyperparameters; classifier_model names
      the graph classifier in ``CLASSIFIER_MODELS``.
    candidate_pool: seed, size and density_range of the K DAGs scored at inference.
    inference: max_skipped_roles and rotate_top_n (``inference_rules``).
  """

  task: str
  roles: tuple[str, ...]
  gives_answer: tuple[bool, ...]
  model_names: tuple[str, ...]
  excluded_models: tuple[str, ...]
  decision_model: str
  option_texts: tuple[str, ...]
  encoder_id: str
  embedding_dim: int
  num_proposers: int
  seed: int
  selector: Mapping[str, Any]
  classifier_model: str
  classifier: Mapping[str, Any]
  candidate_pool: Mapping[str, Any]
  inference: Mapping[str, Any]

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, roles: Sequence[Any], specs: Sequence[Any],
                  encoder_id: str, embedding_dim: int) -> "PolicySpec":
    """The spec of a training config, its task's RoleSpecs and its pool's ModelSpecs."""
    from hieramas_jax.train import environment  # pylint: disable=g-import-not-at-top  (host side, no cycle)

    rules = config.get("inference")
    c = config.selector
    return cls(
        task=config.task.name, roles=tuple(r.name for r in roles), gives_answer=tuple(bool(r.gives_answer)
                                                                                     for r in roles),
        model_names=tuple(s.name for s in specs), excluded_models=tuple(config.llm.exclude_models),
        decision_model=config.llm.decision_model,
        option_texts=environment.option_texts(specs),
        encoder_id=encoder_id, embedding_dim=int(embedding_dim), num_proposers=int(c.num_proposers),
        seed=int(config.seed),
        selector=selector_hparams(config),
        classifier_model=str(config.gcn.get("model", "gcn")), classifier=classifier_hparams(config),
        candidate_pool=pool_settings(config),
        inference={"max_skipped_roles": int(rules.max_skipped_roles) if rules is not None else -1,
                   "rotate_top_n": int(rules.rotate_top_n) if rules is not None else 0})

  @classmethod
  def from_environment(cls, env: Any) -> "PolicySpec":
    """The spec of a ``train.environment.Environment``."""
    return cls.from_config(env.config, env.roles, env.specs, env.encoder_id, env.option_emb.shape[-1])

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    return {k: list(v) if isinstance(v, tuple) else (dict(v) if isinstance(v, Mapping) else v)
            for k, v in out.items()}

  @classmethod
  def from_json(cls, data: Mapping[str, Any]) -> "PolicySpec":
    names = {f.name for f in dataclasses.fields(cls)}
    missing, unknown = names - set(data), set(data) - names
    if missing or unknown:
      raise PolicyLoadError(f"policy spec fields missing {sorted(missing)} / unknown {sorted(unknown)}; it was "
                            "written by another hieramas_jax version")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

  def replace(self, **changes) -> "PolicySpec":
    return dataclasses.replace(self, **changes)


def selector_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  c = config.selector
  return {"hidden_dim": int(c.hidden_dim), "init_skip_bias": float(c.init_skip_bias), "skip_head": str(c.skip_head),
          "input_scale": bool(c.input_scale), "synthesizer_may_skip": bool(c.synthesizer_may_skip),
          "proposer_may_skip": bool(c.proposer_may_skip)}


def classifier_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  c = config.gcn
  return {"role_dim": int(c.role_dim), "hidden_dim": int(c.hidden_dim), "num_layers": int(c.num_layers),
          "mlp_dim": int(c.mlp_dim), "impl": str(c.impl)}


# ---------------------------------------------------------------------------
# Models (a registry for the graph classifier: another GNN = one module + one entry)
# ---------------------------------------------------------------------------


def _gcn(num_roles: int, query_dim: int, hparams: Mapping[str, Any], rngs: nnx.Rngs) -> gcn.GraphClassifier:
  return gcn.GraphClassifier(num_roles, query_dim, role_dim=hparams["role_dim"], hidden_dim=hparams["hidden_dim"],
                             num_layers=hparams["num_layers"], mlp_dim=hparams["mlp_dim"], rngs=rngs)


CLASSIFIER_MODELS = {"gcn": _gcn}


def new_selector(num_proposers: int, text_dim: int, profile_dim: int, hparams: Mapping[str, Any],
                 seed: int) -> sel.LLMSelector:
  return sel.LLMSelector(num_proposers, text_dim, profile_dim, hidden_dim=hparams["hidden_dim"],
                         init_skip_bias=hparams["init_skip_bias"], skip_head=hparams["skip_head"],
                         input_scale=hparams["input_scale"], rngs=nnx.Rngs(seed))


def new_classifier(model: str, num_roles: int, query_dim: int, hparams: Mapping[str, Any], seed: int):
  if model not in CLASSIFIER_MODELS:
    raise ValueError(f"graph classifier {model!r} is not one of {sorted(CLASSIFIER_MODELS)}")
  return CLASSIFIER_MODELS[model](num_roles, query_dim, hparams, nnx.Rngs(seed + _CLASSIFIER_SEED_OFFSET))


def split_module(module) -> tuple[Any, Any]:
  """(graphdef, pure-dict parameters): what jitted code and orbax take."""
  graphdef, state = nnx.split(module)
  return graphdef, nnx.to_pure_dict(state)


def abstract_module(build) -> tuple[Any, Any]:
  """graphdef and ShapeDtypeStruct parameters of a module, without computing any initial value."""
  return split_module(nnx.eval_shape(build))


def selector_parts(spec: PolicySpec, abstract: bool = False):
  build = lambda: new_selector(spec.num_proposers, spec.embedding_dim, spec.embedding_dim, spec.selector, spec.seed)
  return abstract_module(build) if abstract else split_module(build())


def classifier_parts(spec: PolicySpec, abstract: bool = False):
  build = lambda: new_classifier(spec.classifier_model, len(spec.roles), spec.embedding_dim, spec.classifier,
                                 spec.seed)
  return abstract_module(build) if abstract else split_module(build())


