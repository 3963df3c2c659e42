"""``HieraMASPolicy``: the LLM selector, the graph classifier and the option embeddings under one spec.

    policy = HieraMASPolicy.load("runs/math")          # no config, task or LLM needed
    actions = policy.act(query_role_emb)               # [B, R, P+1] option indices (M = skip)
    scores = policy.score(query_emb, policy.candidate_pool())

A policy is a JSON-able ``PolicySpec`` (task, roles, models, encoder, the
models' hyperparameters, the candidate pool and the inference rules) plus the
selector's and the classifier's parameters and the option embeddings the
selector was trained with. Training (stage 1 and stage 2) writes it through
``policy.schema`` and inference reads it back: one place defines what a
checkpoint holds. Parameters restore into an abstract target with an explicit
sharding, so a checkpoint written on 8 GPUs loads in a 1-CPU process.

Schema 2 (this version) stores the spec in the metadata and the option
embeddings in the stage-1 state. Schema 1 workdirs (written before the policy
existed) load from their saved config, re-embedding the option texts with the
encoder they were trained with.
"""

from __future__ import annotations

import copy
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from hieramas_jax import checkpointing, graph_scoring, graphs, inference_rules
from hieramas_jax.models import selector as sel
from hieramas_jax.policy import schema
from hieramas_jax.policy import spec as spec_lib
from hieramas_jax.policy.spec import PolicySpec

_RANDOM_GRAPH_STREAM = 5  # keeps the no-classifier fallback's draws apart from training's seeded streams

sample_actions = jax.jit(sel.sample)  # one compiled sampler; temperature is a traced argument


# ---------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------


class HieraMASPolicy:
  """Selector + optional graph classifier + option embeddings, under one ``PolicySpec``.

  Attributes:
    spec: what the parameters mean.
    selector: (graphdef, params) of the LLM selector, on one device.
    classifier: (graphdef, params) of the graph classifier, or None.
    option_emb: [M+1, D] embeddings of ``spec.option_texts``.
    graph_choice_reason: why there is no classifier ('' when there is one).
  """

  def __init__(self, spec: PolicySpec, selector: tuple[Any, Any], option_emb: Any,
               classifier: tuple[Any, Any] | None = None, *, sharding: jax.sharding.Sharding | None = None,
               devices: Sequence[jax.Device] | None = None, graph_choice_reason: str = ""):
    self.spec = spec
    self.sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    want = (len(spec.model_names) + 1, spec.embedding_dim)
    if np.shape(option_emb) != want:
      raise ValueError(f"option embeddings have shape {np.shape(option_emb)}; expected {list(want)} (one per model "
                       "and one for skip, of the encoder's dimension)")
    # One device holds the selector: its forward pass is the same program wherever the checkpoint was written.
    self.selector = (selector[0], jax.device_put(selector[1], self.sharding))
    self.option_emb = jax.device_put(jnp.asarray(option_emb, jnp.float32), self.sharding)
    self.classifier = classifier
    self._scorer = None
    if classifier is not None:
      impl = spec.classifier.get("impl", "dense")
      self._scorer = graph_scoring.ShardedGraphScorer(classifier[0], classifier[1], impl=impl, devices=devices)
      if self._scorer.num_roles != len(spec.roles):
        raise ValueError(f"the graph classifier has {self._scorer.num_roles} roles but task {spec.task!r} has "
                         f"{len(spec.roles)}")
      if self._scorer.query_dim != spec.embedding_dim:
        raise ValueError(f"the graph classifier takes {self._scorer.query_dim}-d query embeddings but the encoder "
                         f"{spec.encoder_id!r} gives {spec.embedding_dim}-d ones")
    self.graph_choice_reason = "" if classifier is not None else (
        graph_choice_reason or "no graph classifier given: a seeded random candidate DAG per query")
    self._pool: np.ndarray | None = None

  @classmethod
  def init(cls, spec: PolicySpec, option_emb: Any, *, with_classifier: bool = True, **kwargs) -> "HieraMASPolicy":
    """A policy with the seeded initial parameters training starts from."""
    classifier = spec_lib.classifier_parts(spec) if with_classifier else None
    return cls(spec, spec_lib.selector_parts(spec), option_emb, classifier, **kwargs)

  # ---- shapes ---------------------------------------------------------------
  @property
  def has_classifier(self) -> bool:
    return self._scorer is not None

  @property
  def num_devices(self) -> int:
    """Devices graph scoring is sharded over (0 without a classifier)."""
    return self._scorer.num_devices if self._scorer is not None else 0

  def selection_mask(self, batch: int) -> np.ndarray:
    """[B, R, P+1, M+1] bool: the options each position may take."""
    s = self.spec
    excluded = set(s.excluded_models)
    return np.asarray(sel.SelectionMask.build(
        batch, len(s.roles), s.num_proposers, len(s.model_names),
        model_allowed=np.array([m not in excluded for m in s.model_names], bool),
        synthesizer_may_skip=s.selector["synthesizer_may_skip"],
        proposer_may_skip=s.selector["proposer_may_skip"]).valid)

  def _check_query_role_emb(self, query_role_emb: Any) -> np.ndarray:
    x = np.asarray(query_role_emb, np.float32)
    r, d = len(self.spec.roles), self.spec.embedding_dim
    if x.ndim != 3 or x.shape[1:] != (r, d):
      raise ValueError(f"query+role embeddings have shape {x.shape}; expected [B, {r}, {d}] (one per query and role, "
                       f"from the encoder {self.spec.encoder_id!r})")
    return x

  # ---- the LLM selector -----------------------------------------------------
  def logits(self, query_role_emb: Any) -> np.ndarray:
    """The selector's unmasked logits [B, R, P+1, M+1] of query+role embeddings [B, R, D] (option M is skip)."""
    return np.asarray(self._logits(self._check_query_role_emb(query_role_emb)))

  def _logits(self, query_role_emb: np.ndarray) -> jax.Array:
    if not len(query_role_emb):
      s = self.spec
      return jnp.zeros((0, len(s.roles), s.num_proposers + 1, len(s.model_names) + 1), jnp.float32)
    graphdef, params = self.selector
    return sel.selector_logits(graphdef, params, jax.device_put(query_role_emb, self.sharding), self.option_emb)

  def act(self, query_role_emb: Any, key: jax.Array | None = None, temperature: float = 1.0, *,
          query_ids: Sequence[str] | None = None) -> np.ndarray:
    """Option indices [B, R, P+1] for query+role embeddings [B, R, D] (index M = skip).

    Args:
      query_role_emb: [B, R, D].
      key: None for the argmax under ``spec.inference`` (the inference rules);
        a PRNG key to sample from softmax(logits / temperature) over the valid
        options, as stage 1 samples (the rules are argmax rules: not applied).
      temperature: the sampling temperature.
      query_ids: the queries' uids; needed when ``spec.inference.rotate_top_n``
        > 0 (the proposer rotation is seeded per query).
    """
    logits = self._logits(self._check_query_role_emb(query_role_emb))
    valid = self.selection_mask(logits.shape[0])
    if key is not None:
      if not temperature > 0:
        raise ValueError(f"temperature={temperature!r}; sampling needs a temperature > 0")
      return np.asarray(sample_actions(key, logits, jnp.asarray(valid), float(temperature)))
    s = self.spec
    return choose_actions(logits, valid, s.gives_answer, seed=s.seed, query_ids=query_ids,
                          num_proposers=s.num_proposers, **s.inference)

  def with_inference_rules(self, *, max_skipped_roles: int | None = None, rotate_top_n: int | None = None,
                           candidate_density_range: Sequence[float] | None = None,
                           num_candidates: int | None = None) -> "HieraMASPolicy":
    """This policy (same parameters) with other inference settings; None keeps a field."""
    rules, pool = dict(self.spec.inference), dict(self.spec.candidate_pool)
    if max_skipped_roles is not None:
      if isinstance(max_skipped_roles, bool) or int(max_skipped_roles) != max_skipped_roles or max_skipped_roles < -1:
        raise ValueError(f"max_skipped_roles={max_skipped_roles!r}; give the most roles inference may drop "
                         "(0 drops none) or -1 for no cap")
      rules["max_skipped_roles"] = int(max_skipped_roles)
    if rotate_top_n is not None:
      if isinstance(rotate_top_n, bool) or int(rotate_top_n) != rotate_top_n or rotate_top_n < 0:
        raise ValueError(f"rotate_top_n={rotate_top_n!r}; give how many top models the proposers rotate over, or "
                         "0 for none")
      rules["rotate_top_n"] = int(rotate_top_n)
    if candidate_density_range is not None:
      lo, hi = (float(x) for x in candidate_density_range)
      graphs.edge_count_range(len(self.spec.roles), (lo, hi))  # ValueError saying what to change
      pool["density_range"] = [lo, hi]
    if num_candidates is not None:
      if int(num_candidates) < 1:
        raise ValueError(f"num_candidates={num_candidates}; it must be >= 1")
      pool["size"] = int(num_candidates)
    out = copy.copy(self)
    out.spec = self.spec.replace(inference=rules, candidate_pool=pool)
    if pool != dict(self.spec.candidate_pool):
      out._pool = None  # drawn again
    return out

  # ---- the graph classifier -------------------------------------------------
  def candidate_pool(self) -> np.ndarray:
    """The K candidate DAGs [K, N, N] int8 scored at inference (all distinct ones when fewer exist)."""
    if self._pool is None:
      self._pool = spec_lib.draw_pool(self.spec.candidate_pool, len(self.spec.roles)).astype(np.int8)
    return self._pool.copy()

  def score(self, query_emb: Any, adjacency: Any) -> np.ndarray:
    """Classifier logits [B, K] of query embeddings [B, D] against DAGs [K, N, N] or [B, K, N, N]."""
    if self._scorer is None:
      raise RuntimeError(f"this HieraMAS has no graph classifier ({self.graph_choice_reason}); run stage 2 "
                         "(launch.train with stages='both' or 'stage2') to score graphs")
    q = np.asarray(query_emb, np.float32)
    if q.ndim != 2 or q.shape[1] != self.spec.embedding_dim:
      raise ValueError(f"query embeddings have shape {q.shape}; expected [B, {self.spec.embedding_dim}] from the "
                       f"encoder {self.spec.encoder_id!r}")
    if not np.isfinite(q).all():
      raise ValueError("query embeddings hold NaN or infinite values")
    adjs = graph_scoring.validate_graph_stack(adjacency, len(self.spec.roles), batch=q.shape[0])
    return self._scorer(q, adjs)

  def random_graph_indices(self, query_ids: Sequence[str], num_graphs: int) -> np.ndarray:
    """A seeded candidate index per query, from the query's uid (independent of the batch)."""
    return np.array([np.random.default_rng([self.spec.seed, _RANDOM_GRAPH_STREAM, inference_rules.query_key(uid)])
                     .integers(0, num_graphs) for uid in query_ids], np.int64)

  # ---- saving and loading ---------------------------------------------------
  def save(self, workdir: str | pathlib.Path, *, config: ml_collections.ConfigDict | None = None,
           step: int = 0) -> None:
    """Writes the policy as a workdir's stage-1 (and stage-2) checkpoints at ``step``.

    The optimizer state is fresh: training in this workdir continues from
    these parameters. ``config`` (the run's config) is what
    ``HieraMAS.from_workdir`` builds the task, encoder and backend from.
    """
    params = self.selector[1]
    state = schema.selector_train_state(params, _fresh(params), np.zeros(len(self.spec.roles)), params, -np.inf,
                                 self.option_emb)
    with checkpointing.Checkpointer(schema.checkpoint_dir(workdir, schema.STAGE1)) as ckpt:
      ckpt.save(step, state, schema.checkpoint_metadata(self.spec, schema.STAGE1, step, config), force=True)
    if self.classifier is not None:
      params = self.classifier[1]
      with checkpointing.Checkpointer(schema.checkpoint_dir(workdir, schema.STAGE2)) as ckpt:
        ckpt.save(step, schema.classifier_train_state(params, _fresh(params), params, np.nan),
                  schema.checkpoint_metadata(self.spec, schema.STAGE2, step, config), force=True)

  @classmethod
  def load(cls, workdir: str | pathlib.Path, *, encoder: Any = None, sharding: jax.sharding.Sharding | None = None,
           devices: Sequence[jax.Device] | None = None) -> "HieraMASPolicy":
    """The trained policy of a ``launch.train`` workdir (the kept parameters of each stage).

    The selector is required (FileNotFoundError without it); the stage-2
    classifier is optional: without it ``graph_choice_reason`` says why.
    ``encoder`` is needed only for schema-1 workdirs (it re-embeds their option
    texts); it must be the one training used. Arrays restore into ``sharding``
    (default: the first local device), whatever layout they were saved from.
    """
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    spec, _ = schema.read_spec(workdir, embedding_dim=encoder.dim if encoder is not None else None)
    graphdef, template = schema.selector_template(spec)
    with checkpointing.Checkpointer(schema.checkpoint_dir(workdir, schema.STAGE1)) as ckpt:
      state, _ = schema.restore_train_state(ckpt, template, sharding)
    option_emb = state.get("option_emb")
    if option_emb is None:  # schema 1: the option texts embedded again, as training embedded them
      option_emb = np.asarray(encoder.encode(list(spec.option_texts)), np.float32)
    classifier, reason = _load_classifier(workdir, spec, sharding)
    if classifier is None:
      reason += "; graphs are drawn at random from the candidate pool (seeded per query)"
      logging.warning("HieraMAS policy from %s: %s", workdir, reason)
    return cls(spec, (graphdef, state["best_params"]), option_emb, classifier, sharding=sharding, devices=devices,
               graph_choice_reason=reason)


def _fresh(params):
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), schema.optimizer_template(params))


def _load_classifier(workdir, spec: PolicySpec, sharding) -> tuple[tuple[Any, Any] | None, str]:
  """(graphdef, kept params) of a workdir's stage-2 classifier, or (None, why there is none)."""
  from hieramas_jax.train import stage2  # pylint: disable=g-import-not-at-top  (reads the workdir's label data)

  untrained = stage2.untrained_reason(workdir)  # also catches workdirs that saved fresh parameters
  if untrained:
    return None, untrained
  directory = schema.checkpoint_dir(workdir, schema.STAGE2)
  if not directory.is_dir():
    return None, f"no stage-2 checkpoint ({directory} does not exist)"
  graphdef, params = spec_lib.classifier_parts(spec, abstract=True)
  template = schema.classifier_train_state(params, schema.optimizer_template(params), params, 0.0)
  with checkpointing.Checkpointer(directory) as ckpt:
    if ckpt.latest_step() is None:
      return None, f"no trained graph classifier: {directory} holds no checkpoint; run stage 2 first"
    state, meta = schema.restore_train_state(ckpt, template, sharding)
  if meta.get("roles") not in (None, list(spec.roles)):
    raise ValueError(f"the stage-2 checkpoint in {directory} was trained for roles {meta['roles']}, not "
                     f"{list(spec.roles)}")
  return (graphdef, state["best_params"]), ""


def choose_actions(logits: Any, valid: Any, gives_answer: Sequence[bool], *, seed: int,
                   query_ids: Sequence[str] | None, num_proposers: int, max_skipped_roles: int = -1,
                   rotate_top_n: int = 0) -> np.ndarray:
  """The selector's inference choice [B, R, P+1]: its argmax under the skip cap and proposer rotation.

  With neither rule on, the plain masked argmax (bit for bit stage 1's greedy
  selection). ``query_ids`` seed the rotation (needed when ``rotate_top_n`` > 0).
  """
  if max_skipped_roles < 0 and rotate_top_n == 0:
    return np.asarray(sel.argmax(jnp.asarray(logits), jnp.asarray(valid)))
  rows = None
  if rotate_top_n:
    if query_ids is None:
      raise ValueError("proposer rotation is seeded per query: pass query_ids (the queries' uids)")
    rows = inference_rules.rotation_rows(seed, list(query_ids), np.shape(logits)[1], num_proposers)
  return inference_rules.apply_inference_rules(np.asarray(logits), np.asarray(valid), np.asarray(gives_answer, bool),
                                               max_skipped_roles=max_skipped_roles, rotate_top_n=rotate_top_n,
                                               rotation_row=rows)

