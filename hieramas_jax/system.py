"""The user-facing HieraMAS object: load a trained workdir, plan, run, score graphs.

    system = HieraMAS.from_workdir("runs/math")
    planned = system.plan(["What is 3 + 4?"])      # models per position + the chosen DAG
    results = system.run(["What is 3 + 4?"])       # answers, cost, tokens, calls, latency
    scores = system.score_graphs(queries, pool)    # [B, K] logits of candidate DAGs

Checkpoints restore into an explicit target layout (the first local device by
default), so a workdir written on 8 GPUs loads in a 1-CPU process. The selector
runs on that one device. Graph scoring is sharded over all local devices along
the candidate axis K (``ShardedGraphScorer``); every device scores blocks of a
size that does not depend on the device count, so 1 and 8 devices give
bit-identical scores.

The models per position are the selector's argmax under ``config.inference``
(the paper's inference rules): ``max_skipped_roles`` caps how many roles may be
dropped (their synthesizer's argmax is ``skip``; highest p(skip) first, never
every answer-giving role) and ``rotate_top_n`` makes a role's proposers rotate
over the top models of one seeded proposer row. The candidate DAGs come from
``graphs.candidate_density_range``. ``set_inference_rules`` changes the rules
of a loaded system.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hieramas_jax import config as config_lib
from hieramas_jax import checkpointing, executor, graphs
from hieramas_jax.llm import base as llm_base
from hieramas_jax.llm import preflight as llm_preflight
from hieramas_jax.models import selector as sel
from hieramas_jax.tasks.base import Problem, Task
from hieramas_jax.train import builders, environment, rollout, stage2

# Graph-choice modes (``HieraMAS.graph_choice``).
CLASSIFIER, RANDOM = "classifier", "random"
_RANDOM_GRAPH_STREAM = 5  # keeps the fallback's draws apart from training's seeded streams


# ---------------------------------------------------------------------------
# Graph stacks: validation and sharded scoring
# ---------------------------------------------------------------------------


def validate_graph_stack(adjacency: Any, num_roles: int, batch: int | None = None) -> np.ndarray:
  """Checks candidate DAGs [K, N, N] (shared) or [B, K, N, N] (per query); returns them as int8.

  Raises graphs.InvalidGraphError naming the expected shape, or the index of
  the first bad graph and what is wrong with it (entry not 0/1, self-loop, cycle).
  """
  try:
    a = np.asarray(adjacency)
  except ValueError as e:  # ragged nested lists
    raise graphs.InvalidGraphError(f"the graphs cannot be read as one array ({e}); every adjacency must be "
                                   f"[{num_roles}, {num_roles}]") from None
  want = f"[K, {num_roles}, {num_roles}] (one pool for all queries) or [B, K, {num_roles}, {num_roles}] (per query)"
  if a.ndim not in (3, 4) or a.shape[-2:] != (num_roles, num_roles):
    raise graphs.InvalidGraphError(f"the graphs have shape {a.shape}; expected {want} for this system's "
                                   f"{num_roles} roles")
  if a.ndim == 4 and batch is not None and a.shape[0] != batch:
    raise graphs.InvalidGraphError(f"per-query graphs have shape {a.shape} for {batch} queries; expected "
                                   f"[{batch}, K, {num_roles}, {num_roles}]")
  if a.shape[-3] == 0:
    raise graphs.InvalidGraphError(f"the graph pool is empty (shape {a.shape}); give at least one graph")
  if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
    raise graphs.InvalidGraphError(f"the graphs have dtype {a.dtype}; expected 0/1 numbers")
  flat = a.reshape(-1, num_roles, num_roles)
  # Vectorised screening (a DAG's adjacency is nilpotent: A^N = 0); the per-graph
  # validator only runs on failures, to name the index and the problem.
  ok = np.isin(flat, (0, 1)).all(axis=(1, 2))
  ints = np.where(ok[:, None, None], flat, 0).astype(np.int32)
  ok &= ~np.diagonal(ints, axis1=1, axis2=2).any(axis=1)
  power = ints
  for _ in range(num_roles):
    power = (power @ ints > 0).astype(np.int32)
  ok &= ~power.any(axis=(1, 2))
  if not ok.all():
    first = int(np.flatnonzero(~ok)[0])
    where = (f"graph {first}" if a.ndim == 3 else
             f"graph {first % a.shape[1]} of query {first // a.shape[1]}")
    try:
      graphs.validate_adjacency(flat[first], num_roles)
    except graphs.InvalidGraphError as e:
      raise graphs.InvalidGraphError(f"{where}: {e}") from None
    raise graphs.InvalidGraphError(f"{where} is not a DAG adjacency matrix")  # unreachable in practice
  return ints.astype(np.int8).reshape(a.shape)


class ShardedGraphScorer:
  """Scores [B, K] (query, DAG) pairs with a GraphClassifier, the K axis sharded over devices.

  The candidates are padded (with empty graphs, sliced off again) to a multiple
  of ``devices x block`` and split over a 1-D mesh with a NamedSharding; each
  device loops over blocks of ``block`` graphs. The block size depends on K and
  B only, never on the device count, so every device runs the same compiled
  block on the same shapes whatever the mesh size: 1 and 8 devices give
  bit-identical scores (the per-query inputs and parameters are replicated).
  """

  AXIS = "graphs"
  # The default block is ceil(K / 8): no more than 7 padded graphs on 1, 2, 4 or 8 devices.
  REFERENCE_DEVICES = 8
  # At most this many (query, graph) pairs per device per block: bounds activation memory.
  MAX_PAIRS_PER_BLOCK = 16384

  def __init__(self, graphdef, params, *, impl: str = "dense", devices: Sequence[jax.Device] | None = None,
               block: int | None = None):
    self.devices = tuple(devices) if devices is not None else tuple(jax.local_devices())
    if not self.devices:
      raise ValueError("ShardedGraphScorer needs at least one device")
    self.mesh = Mesh(np.array(self.devices), (self.AXIS,))
    self.graphdef = graphdef
    self.impl = impl
    self.block = block
    model = nnx.merge(graphdef, params)
    self.num_roles = int(model.num_roles)
    self.query_dim = int(model.query_dim)
    self.params = jax.device_put(params, NamedSharding(self.mesh, PartitionSpec()))
    self._replicated = NamedSharding(self.mesh, PartitionSpec())
    self._compiled: dict[tuple[int, bool], Any] = {}

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  def block_size(self, num_graphs: int, batch: int) -> int:
    """Graphs per device per step: a function of K and B only (never of the device count)."""
    if self.block is not None:
      return max(1, int(self.block))
    return max(1, min(math.ceil(num_graphs / self.REFERENCE_DEVICES), self.MAX_PAIRS_PER_BLOCK // max(batch, 1)))

  def _function(self, block: int, per_query: bool):
    key = (block, per_query)
    if key not in self._compiled:
      graphdef, impl, n = self.graphdef, self.impl, self.num_roles

      def local(params, query_emb, adjs):
        model = nnx.merge(graphdef, params)
        if per_query:  # [B, K_local, N, N] -> [steps, B, block, N, N]
          b = adjs.shape[0]
          blocks = jnp.moveaxis(adjs.reshape(b, -1, block, n, n), 1, 0)
        else:  # [K_local, N, N] -> [steps, block, N, N]
          blocks = adjs.reshape(-1, block, n, n)
        scores = jax.lax.map(lambda a: model(query_emb, a.astype(query_emb.dtype), None, impl=impl), blocks)
        return jnp.moveaxis(scores, 0, 1).reshape(query_emb.shape[0], -1)  # [B, K_local]

      spec = PartitionSpec(None, self.AXIS) if per_query else PartitionSpec(self.AXIS)
      self._compiled[key] = jax.jit(jax.shard_map(
          local, mesh=self.mesh, in_specs=(PartitionSpec(), PartitionSpec(), spec),
          out_specs=PartitionSpec(None, self.AXIS)))
    return self._compiled[key]

  def __call__(self, query_emb: Any, adjacency: Any) -> np.ndarray:
    """Logits [B, K] of query embeddings [B, D] against DAGs [K, N, N] or [B, K, N, N].

    The graphs must already be valid (``validate_graph_stack``); only shapes are checked here.
    """
    q = np.asarray(query_emb, np.float32)
    if q.ndim != 2 or q.shape[1] != self.query_dim:
      raise ValueError(f"query embeddings have shape {q.shape}; expected [B, {self.query_dim}]")
    a = np.asarray(adjacency)
    n = self.num_roles
    if a.ndim not in (3, 4) or a.shape[-2:] != (n, n) or (a.ndim == 4 and a.shape[0] != q.shape[0]):
      raise ValueError(f"graphs have shape {a.shape}; expected [K, {n}, {n}] or [{q.shape[0]}, K, {n}, {n}]")
    batch, per_query = q.shape[0], a.ndim == 4
    k = a.shape[-3]
    if batch == 0 or k == 0:
      return np.zeros((batch, k), np.float32)
    block = self.block_size(k, batch)
    step = block * self.num_devices
    padded = -(-k // step) * step
    stack = np.zeros(a.shape[:-3] + (padded, n, n), np.int8)  # padding: empty graphs (valid, discarded)
    stack[..., :k, :, :] = a
    spec = PartitionSpec(None, self.AXIS) if per_query else PartitionSpec(self.AXIS)
    out = self._function(block, per_query)(
        self.params, jax.device_put(q, self._replicated), jax.device_put(stack, NamedSharding(self.mesh, spec)))
    return np.asarray(out)[:, :k]


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PlannedQuery:
  """What HieraMAS decided for one query.

  Attributes:
    problem: the query.
    assignment: [R][P+1] model names (None = skip); index P is the synthesizer.
    adjacency: [N, N] int8 chosen DAG (``adj[i, j] = 1``: role i feeds role j).
    score: the classifier's logit of that DAG; NaN when it was drawn at random.
    plan: the executor plan (assignment, DAG, decision model, roles).
    graph_index: index of the chosen DAG in the candidate pool.
  """

  problem: Problem
  assignment: list[list[str | None]]
  adjacency: np.ndarray
  score: float
  plan: executor.Plan
  graph_index: int = -1


@dataclasses.dataclass
class RunResult:
  """One executed query.

  Attributes:
    problem: the query.
    answer_text: the decision node's text (None when that call failed).
    answer: the answer the task extracts from it (None when there is none).
    cost_usd: USD of all the query's calls.
    prompt_tokens / completion_tokens: summed over the calls.
    calls: how many LLM calls were made (``result.calls`` holds them).
    latency_s: wall time of the query's critical path: last call end - first call start.
    plan: what was executed.
    result: the executor's full record (role outputs, calls, errors).
    correct: the task's grade of ``answer_text`` against the problem's reference
      answer; None when not graded (no reference answer, ``failed``, grade=False).
  """

  problem: Problem
  answer_text: str | None
  answer: str | None
  cost_usd: float
  prompt_tokens: int
  completion_tokens: int
  calls: int
  latency_s: float
  plan: PlannedQuery
  result: executor.QueryResult
  correct: bool | None = None

  @property
  def failed(self) -> bool:
    """A call of this query failed: an error record (``result.errors`` says which), never graded.

    ``answer_text`` may still hold the decision node's text, but it answered
    without the failed roles' outputs: not the plan's answer.
    """
    return self.result.failed

  @property
  def errors(self) -> list[str]:
    return self.result.errors


def problem_from_text(text: str) -> Problem:
  """A Problem for a plain query text (no reference answer); its uid is a digest of the text."""
  return Problem(uid="q-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16], question=text, answer="")


def _register_with_simulator(backend: Any, problems: Sequence[Problem]) -> None:
  """Tells a simulated pool (possibly behind caches) about new problems; other backends need nothing."""
  seen = set()
  while backend is not None and id(backend) not in seen:
    seen.add(id(backend))
    register = getattr(backend, "register", None)
    if callable(register):
      register(problems)
      return
    backend = getattr(backend, "backend", None)


# ---------------------------------------------------------------------------
# The inference object
# ---------------------------------------------------------------------------


class HieraMAS:
  """A trained HieraMAS: per query, models per position (selector) and a DAG of roles (classifier).

  Build it with ``from_workdir``; the constructor takes the parts directly
  (parameters in memory, e.g. right after training).

  Attributes:
    config: the training config (from the stage-1 checkpoint).
    task, roles, specs, model_names, decision_model: what the system runs on.
    backend: the LLM backend (built on first use unless given).
    has_classifier: whether a stage-2 graph classifier was loaded.
    graph_choice: ``"classifier"`` or ``"random"`` (no classifier: a seeded random
      candidate per query); ``graph_choice_reason`` says why.
    environment: the ``train.environment.Environment`` view shared with training code.
  """

  def __init__(self, config: ml_collections.ConfigDict, selector: tuple[Any, Any],
               classifier: tuple[Any, Any] | None = None, *, task: Task | None = None, backend: Any = None,
               encoder: Any = None, workdir: str | os.PathLike[str] | None = None,
               sharding: jax.sharding.Sharding | None = None, devices: Sequence[jax.Device] | None = None,
               graph_choice_reason: str = ""):
    """Builds the system from its parts.

    Args:
      config: a training config.
      selector: (graphdef, params) of a trained LLM selector.
      classifier: (graphdef, params) of a trained graph classifier, or None
        (graphs are then drawn at random from the candidate pool).
      task: default ``environment.load_task(config)``.
      backend: default ``environment.make_backend`` on first use.
      encoder: default ``environment.make_text_encoder``; must be the training encoder.
      workdir: where caches live (embeddings, LLM responses); None turns both caches off.
      sharding: where the selector's parameters live (default: the first local device).
      devices: the devices graph scoring is sharded over (default: all local devices).
      graph_choice_reason: why there is no classifier, when there is none.
    """
    config = ml_collections.ConfigDict(config.to_dict() if hasattr(config, "to_dict") else config)
    if "inference" not in config:  # a config from before the inference rules: their defaults (plain argmax)
      config.inference = config_lib.base_config(config.task.name).inference
    if workdir is None:
      config.llm.cache = False
      config.encoder.cache = False
    self.config = config
    self.workdir = pathlib.Path(workdir).absolute() if workdir is not None else None
    self.task = task if task is not None else environment.load_task(config)
    self.roles = tuple(self.task.roles)
    self.specs = environment.pool_specs(config)
    self._encoder = encoder if encoder is not None else environment.make_text_encoder(
        config, self.workdir or pathlib.Path.cwd())
    self._backend = backend
    self._owns_backend = backend is None  # close() only closes backends this object built
    if backend is not None:
      llm_base.check_models(backend, self.model_names + [self.decision_model])
      llm_preflight.preflight(backend, self.model_names)  # a dead endpoint fails here, not query by query

    # The option texts exactly as environment.build_environment embeds them (a test keeps them equal).
    option_emb = self._embed([s.profile or s.name for s in self.specs] + [environment.SKIP_PROFILE])
    excluded = set(config.llm.exclude_models)
    self.environment = environment.Environment(
        config=config, task=self.task, roles=self.roles, specs=list(self.specs), backend=backend, splits={},
        encoder_id=self._encoder.encoder_id, option_emb=option_emb, query_emb={}, query_role_emb={},
        model_allowed=np.array([s.name not in excluded for s in self.specs], bool),
        gives_answer=np.array([r.gives_answer for r in self.roles], bool),
        workdir=self.workdir or pathlib.Path.cwd())

    self._selector_sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    self._sel_graphdef = selector[0]
    # One device holds the selector: its forward pass is the same program wherever the checkpoint was written.
    self._sel_params = jax.device_put(selector[1], self._selector_sharding)
    self._option_emb = jax.device_put(jnp.asarray(option_emb), self._selector_sharding)
    self.has_classifier = classifier is not None
    self._scorer = None
    if classifier is not None:
      self._scorer = ShardedGraphScorer(classifier[0], classifier[1], impl=config.gcn.impl, devices=devices)
      if self._scorer.num_roles != len(self.roles):
        raise ValueError(f"the graph classifier has {self._scorer.num_roles} roles but task "
                         f"{self.task.name!r} has {len(self.roles)}")
      if self._scorer.query_dim != self._encoder.dim:
        raise ValueError(f"the graph classifier takes {self._scorer.query_dim}-d query embeddings but the "
                         f"encoder {self._encoder.encoder_id!r} gives {self._encoder.dim}-d ones")
    self.graph_choice = CLASSIFIER if classifier is not None else RANDOM
    self.graph_choice_reason = "" if classifier is not None else (
        graph_choice_reason or "no graph classifier given: a seeded random candidate DAG per query")
    self._pool: np.ndarray | None = None

  # ---- loading ------------------------------------------------------------
  @classmethod
  def from_workdir(cls, workdir: str | os.PathLike[str], *, backend: Any = None, encoder: Any = None,
                   sharding: jax.sharding.Sharding | None = None, num_candidates: int | None = None,
                   devices: Sequence[jax.Device] | None = None) -> "HieraMAS":
    """Loads the trained system of a ``launch.train`` workdir.

    The config comes from the stage-1 checkpoint. The selector is required
    (FileNotFoundError without it); the stage-2 classifier is optional: without
    it graphs are drawn at random and ``graph_choice`` says so. Arrays restore
    into ``sharding`` (default: the first local device), whatever the layout
    they were saved from.

    Args:
      workdir: the training run's workdir.
      backend: an LLM backend to use instead of the configured one.
      encoder: a text encoder to use instead of the configured one (it must be
        the one training used: same ``encoder_id``).
      sharding: target layout of the restored parameters.
      num_candidates: K of the candidate pool (default: the config's).
      devices: devices graph scoring is sharded over (default: all local ones).
    """
    workdir = pathlib.Path(workdir).absolute()
    stage1_dir = workdir / "checkpoints" / "stage1"
    if not stage1_dir.is_dir():  # checked first: opening a Checkpointer would create the folder
      raise FileNotFoundError(f"no trained HieraMAS in {workdir}: {stage1_dir} does not exist; train first with "
                              f"python -m launch.train --config=<config> --workdir={workdir}")
    with checkpointing.Checkpointer(stage1_dir) as ckpt:
      if ckpt.latest_step() is None:
        raise FileNotFoundError(f"no trained selector in {workdir}: {stage1_dir} holds no checkpoint; run stage 1 "
                                "(launch.train with stages='both' or 'stage1')")
      meta = ckpt.metadata()
    if "config" not in meta:
      raise ValueError(f"the stage-1 checkpoint in {stage1_dir} has no config in its metadata; it was not "
                       "written by launch.train")
    config = config_lib.from_saved(meta["config"])
    if num_candidates is not None:
      if int(num_candidates) < 1:
        raise ValueError(f"num_candidates={num_candidates}; it must be >= 1")
      config.graphs.num_candidates = int(num_candidates)
    task = environment.load_task(config)
    roles = [r.name for r in task.roles]
    if encoder is None:
      encoder = environment.make_text_encoder(config, workdir)
    trained_with = meta.get("encoder_id")
    if trained_with is not None and encoder.encoder_id != trained_with:
      raise ValueError(f"the selector in {workdir} was trained on encoder {trained_with!r}, not "
                       f"{encoder.encoder_id!r}; pass that encoder (or none, to build the configured one)")
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    specs = environment.pool_specs(config)
    sel_graphdef, sel_params, _ = builders.load_selector(
        workdir, config, encoder.dim, encoder.dim, model_names=[s.name for s in specs], roles=roles,
        sharding=sharding)
    classifier, reason = None, ""
    stage2_dir = workdir / "checkpoints" / "stage2"
    untrained = stage2.untrained_reason(workdir)
    if untrained:  # also catches workdirs whose stage 2 saved fresh parameters before this was checked
      reason = untrained
    elif stage2_dir.is_dir():
      try:
        cls_graphdef, cls_params, cls_meta = builders.load_classifier(workdir, config, len(roles), encoder.dim,
                                                                      sharding=sharding)
      except FileNotFoundError as e:
        reason = str(e)
      else:
        if cls_meta.get("roles") not in (None, roles):
          raise ValueError(f"the stage-2 checkpoint in {stage2_dir} was trained for roles {cls_meta['roles']}, "
                           f"not {roles}")
        classifier = (cls_graphdef, cls_params)
    else:
      reason = f"no stage-2 checkpoint ({stage2_dir} does not exist)"
    if classifier is None:
      reason += "; graphs are drawn at random from the candidate pool (seeded per query)"
      logging.warning("HieraMAS from %s: %s", workdir, reason)
    return cls(config, (sel_graphdef, sel_params), classifier, task=task, backend=backend, encoder=encoder,
               workdir=workdir, sharding=sharding, devices=devices, graph_choice_reason=reason)

  # ---- pieces -------------------------------------------------------------
  @property
  def model_names(self) -> list[str]:
    return [s.name for s in self.specs]

  @property
  def decision_model(self) -> str:
    return self.config.llm.decision_model

  @property
  def encoder(self):
    return self._encoder

  @property
  def num_devices(self) -> int:
    """Devices graph scoring is sharded over (0 without a classifier)."""
    return self._scorer.num_devices if self._scorer is not None else 0

  @property
  def backend(self):
    """The LLM backend; the configured one is built (and its config checked) on first use."""
    if self._backend is None:
      specs = environment.validate_config(self.config, num_roles=len(self.roles))
      backend = environment.make_backend(self.config, specs, self.task, [], self.workdir or pathlib.Path.cwd())
      try:
        llm_base.check_models(backend, self.model_names + [self.decision_model])
        llm_preflight.preflight(backend, self.model_names)  # before the first query: one clear error
      except Exception:
        executor.close_backend(backend)  # no HTTP session outlives a failed start
        raise
      self._backend = self.environment.backend = backend
    return self._backend

  def close(self) -> None:
    """Closes a backend this object built (HTTP sessions, response cache); a given backend stays open."""
    if self._backend is not None and self._owns_backend:
      executor.close_backend(self._backend)
      self._backend = self.environment.backend = None

  def __enter__(self) -> "HieraMAS":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def _embed(self, texts: Sequence[str]) -> np.ndarray:
    return np.asarray(self._encoder.encode(list(texts)), np.float32)

  def problems(self, queries: Sequence[str | Problem]) -> list[Problem]:
    """Queries as Problems: Problems pass through, texts get a uid from a digest of the text."""
    if isinstance(queries, (str, Problem)):
      raise TypeError("pass a sequence of queries; wrap a single one in a list: [query]")
    out = []
    for i, q in enumerate(queries):
      if isinstance(q, Problem):
        out.append(q)
      elif isinstance(q, str):
        out.append(problem_from_text(q))
      else:
        raise TypeError(f"query {i} is a {type(q).__name__}; pass texts (str) or tasks.base.Problem")
    return out

  def query_embeddings(self, problems: Sequence[str | Problem]) -> np.ndarray:
    """Embeddings [B, D] of the query texts (the graph classifier's input)."""
    return self._embed([p.question for p in self.problems(problems)])

  def candidate_pool(self) -> np.ndarray:
    """The K candidate DAGs [K, N, N] scored at inference: training's ``stage2.candidate_pool``."""
    if self._pool is None:
      self._pool = stage2.candidate_pool(self.environment).astype(np.int8)
    return self._pool.copy()

  # ---- the LLM selector -----------------------------------------------------
  def set_inference_rules(self, *, max_skipped_roles: int | None = None, rotate_top_n: int | None = None,
                          candidate_density_range: tuple[float, float] | None = None) -> None:
    """Changes the inference-time settings for later plans (the checkpoint's otherwise); None keeps a field.

    Args:
      max_skipped_roles: ``config.inference``'s: the most roles dropped per query, -1 for no cap.
      rotate_top_n: ``config.inference``'s: proposers rotate over this many top models, 0 for none.
      candidate_density_range: ``config.graphs``' (low, high) density of the default candidate pool.
    """
    if candidate_density_range is not None:
      try:
        lo, hi = environment.density_bounds(candidate_density_range, "graphs.candidate_density_range")
        graphs.edge_count_range(len(self.roles), (lo, hi))
      except (environment.ConfigError, ValueError) as e:
        raise ValueError(str(e)) from None
      if (lo, hi) != tuple(self.config.graphs.candidate_density_range):
        self.config.graphs.candidate_density_range = (lo, hi)
        self._pool = None  # drawn again from the new range
    if max_skipped_roles is not None:
      if isinstance(max_skipped_roles, bool) or int(max_skipped_roles) != max_skipped_roles or max_skipped_roles < -1:
        raise ValueError(f"max_skipped_roles={max_skipped_roles!r}; give the most roles inference may drop "
                         "(0 drops none) or -1 for no cap")
      self.config.inference.max_skipped_roles = int(max_skipped_roles)
    if rotate_top_n is not None:
      if isinstance(rotate_top_n, bool) or int(rotate_top_n) != rotate_top_n or rotate_top_n < 0:
        raise ValueError(f"rotate_top_n={rotate_top_n!r}; give how many top models the proposers rotate over, or "
                         "0 for none")
      self.config.inference.rotate_top_n = int(rotate_top_n)

  def selector_logits(self, queries: Sequence[str | Problem]) -> np.ndarray:
    """The selector's unmasked logits [B, R, P+1, M+1] (option M is ``skip``)."""
    problems = self.problems(queries)
    b, r = len(problems), len(self.roles)
    if b == 0:
      return np.zeros((0, r, self.config.selector.num_proposers + 1, len(self.specs) + 1), np.float32)
    qr = self._embed([environment.query_role_text(p, role) for p in problems for role in self.roles])
    qr = jax.device_put(qr.reshape(b, r, -1), self._selector_sharding)
    return np.asarray(sel.selector_logits(self._sel_graphdef, self._sel_params, qr, self._option_emb))

  def _actions(self, problems: Sequence[Problem]) -> np.ndarray:
    """The selector's option indices [B, R, P+1]: argmax under the ``inference`` rules (skip cap, rotation)."""
    b, r = len(problems), len(self.roles)
    if b == 0:
      return np.zeros((0, r, self.config.selector.num_proposers + 1), np.int64)
    return np.asarray(rollout.inference_actions(self.environment, self.selector_logits(problems), problems))

  def _fixed_actions(self, count: int, model: str) -> np.ndarray:
    if model not in self.model_names:
      raise ValueError(f"fixed_model={model!r} is not in the pool {self.model_names}")
    positions = self.config.selector.num_proposers + 1
    return np.full((count, len(self.roles), positions), self.model_names.index(model), np.int64)

  def assignments(self, problems: Sequence[str | Problem], *,
                  fixed_model: str | None = None) -> list[list[list[str | None]]]:
    """Per query, per role, the model of each position [R][P+1] (None = skip).

    The selector's argmax under ``config.inference``: at most
    ``max_skipped_roles`` roles dropped (-1: no cap), never every answer-giving
    role when capped, and proposers rotating over the top ``rotate_top_n``
    models (see ``train.rollout.apply_inference_rules``). ``fixed_model`` puts
    that one model at every position (the no-selection ablation).
    """
    problems = self.problems(problems)
    actions = self._fixed_actions(len(problems), fixed_model) if fixed_model else self._actions(problems)
    return sel.actions_to_assignment(actions, self.model_names)

  # ---- the graph classifier ---------------------------------------------------
  def score_graphs(self, queries_or_embeddings: Any, adjacency: Any) -> np.ndarray:
    """Classifier logits [B, K] of candidate DAGs for each query.

    Args:
      queries_or_embeddings: texts / Problems, or a float array [B, D] of
        precomputed query embeddings (this system's encoder).
      adjacency: [K, N, N] shared by all queries, or [B, K, N, N] per query.
    Returns:
      scores [B, K] (higher: a more promising DAG); identical on any number of devices.
    """
    if self._scorer is None:
      raise RuntimeError(f"this HieraMAS has no graph classifier ({self.graph_choice_reason}); run stage 2 "
                         "(launch.train with stages='both' or 'stage2') to score graphs")
    query_emb = self._as_embeddings(queries_or_embeddings)
    adjs = validate_graph_stack(adjacency, len(self.roles), batch=query_emb.shape[0])
    return self._scorer(query_emb, adjs)

  def _as_embeddings(self, queries_or_embeddings: Any) -> np.ndarray:
    x = queries_or_embeddings
    if isinstance(x, (np.ndarray, jax.Array)) and np.issubdtype(x.dtype, np.floating):
      x = np.asarray(x, np.float32)
      if x.ndim != 2 or x.shape[1] != self._encoder.dim:
        raise ValueError(f"query embeddings have shape {x.shape}; expected [B, {self._encoder.dim}] from the "
                         f"encoder {self._encoder.encoder_id!r}")
      if not np.isfinite(x).all():
        raise ValueError("query embeddings hold NaN or infinite values")
      return x
    return self.query_embeddings(x)

  def _random_indices(self, problems: Sequence[Problem], k: int) -> np.ndarray:
    """A seeded candidate index per query, from the query's uid (independent of the batch)."""
    return np.array([np.random.default_rng(
        [int(self.config.seed), _RANDOM_GRAPH_STREAM, int(hashlib.sha1(p.uid.encode()).hexdigest()[:12], 16)]
    ).integers(0, k) for p in problems], np.int64)

  def _choose(self, problems: Sequence[Problem], pool: Any, random_graph: bool):
    """(chosen DAGs [B, N, N], their scores [B], their pool indices [B])."""
    pool = self.candidate_pool() if pool is None else validate_graph_stack(pool, len(self.roles),
                                                                           batch=len(problems))
    b = len(problems)
    if random_graph or self._scorer is None:
      index = self._random_indices(problems, pool.shape[-3])
      scores = np.full(b, np.nan, np.float32)
    else:
      all_scores = self._scorer(self.query_embeddings(problems), pool)
      index = all_scores.argmax(axis=1) if b else np.zeros(0, np.int64)
      scores = all_scores[np.arange(b), index]
    chosen = pool[np.arange(b), index] if pool.ndim == 4 else pool[index]
    return chosen, scores, index

  def choose_graphs(self, problems: Sequence[str | Problem], pool: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The best-scoring DAG per query [B, N, N] and its score [B] (NaN when drawn at random).

    ``pool``: [K, N, N] or [B, K, N, N] candidates (default: ``candidate_pool()``).
    """
    chosen, scores, _ = self._choose(self.problems(problems), pool, random_graph=False)
    return chosen, scores

  # ---- planning and running -----------------------------------------------
  def plan(self, queries: Sequence[str | Problem], *, pool: Any = None, fixed_model: str | None = None,
           random_graph: bool = False) -> list[PlannedQuery]:
    """Per query: the models per position and the chosen DAG, as executor plans.

    Args:
      queries: texts or Problems.
      pool: candidate DAGs [K, N, N] or [B, K, N, N] (default: ``candidate_pool()``).
      fixed_model: one model at every position instead of the selector's choice (ablation).
      random_graph: a seeded random candidate instead of the classifier's best (ablation).
    """
    problems = self.problems(queries)
    actions = self._fixed_actions(len(problems), fixed_model) if fixed_model else self._actions(problems)
    chosen, scores, index = self._choose(problems, pool, random_graph)
    plans = rollout.make_plans(self.environment, problems, actions, chosen, sample=0)
    return [PlannedQuery(problem=p, assignment=[list(row) for row in plan.assignment], adjacency=adj,
                         score=float(s), plan=plan, graph_index=int(i))
            for p, plan, adj, s, i in zip(problems, plans, chosen, scores, index)]

  def run(self, queries: Sequence[str | Problem | PlannedQuery], *, pool: Any = None,
          trace_path: str | os.PathLike[str] | None = None, fixed_model: str | None = None,
          random_graph: bool = False, grade: bool = True) -> list[RunResult]:
    """Plans (unless given PlannedQuery items) and executes the queries.

    Args:
      queries: texts, Problems, or the output of ``plan`` (run as they are).
      pool, fixed_model, random_graph: as in ``plan``.
      trace_path: a JSONL file that receives one line per LLM call.
      grade: grade answers of problems that have a reference answer (``correct``).
    Returns:
      one RunResult per query, in order.
    """
    queries = list(queries)
    if queries and all(isinstance(q, PlannedQuery) for q in queries):
      planned = queries
    elif any(isinstance(q, PlannedQuery) for q in queries):
      raise TypeError("run() takes either queries (texts / Problems) or PlannedQuery items, not a mix")
    else:
      planned = self.plan(queries, pool=pool, fixed_model=fixed_model, random_graph=random_graph)
    backend = self.backend
    _register_with_simulator(backend, [p.problem for p in planned])
    results = executor.execute([p.plan for p in planned], backend, self.task,
                               params=self.environment.generation_params(), trace_path=trace_path)
    correct: list[bool | None] = [None] * len(planned)
    if grade:  # a query with a failed call is an error record: never graded (see RunResult.failed)
      todo = [i for i, (p, r) in enumerate(zip(planned, results)) if p.problem.answer and not r.failed]
      verdicts = self.task.grade_many([planned[i].problem for i in todo], [results[i].final_text for i in todo])
      for i, ok in zip(todo, verdicts):
        correct[i] = bool(ok)
    out = []
    for p, r, ok in zip(planned, results, correct):
      latency = max(c.end for c in r.calls) - min(c.start for c in r.calls) if r.calls else 0.0
      out.append(RunResult(
          problem=p.problem, answer_text=r.final_text,
          answer=self.task.extract(r.final_text) if r.final_text is not None else None,
          cost_usd=r.total_cost, prompt_tokens=sum(c.prompt_tokens for c in r.calls),
          completion_tokens=sum(c.completion_tokens for c in r.calls), calls=len(r.calls), latency_s=latency,
          plan=p, result=r, correct=ok))
    return out


__all__ = ["CLASSIFIER", "RANDOM", "HieraMAS", "PlannedQuery", "RunResult", "ShardedGraphScorer",
           "problem_from_text", "validate_graph_stack"]
