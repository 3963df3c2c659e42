"""The user-facing HieraMAS: a trained policy + the text encoder + the LLM backend + the task.

    with HieraMAS.from_workdir("runs/math") as hm:
      planned = hm.plan(["What is 3 + 4?"])        # models per position + the chosen DAG
      result = hm.run("What is 3 + 4?")            # one query in, one QueryResult out
      results = await hm.arun(queries)             # inside an event loop (notebooks, async handlers)
      scores = hm.score_graphs(queries, pool)      # [B, K] logits of candidate DAGs

The decisions are the policy's (``hieramas_jax.policy.HieraMASPolicy``): the
selector's argmax under the inference rules (or a sample, given a key), and the
classifier's best candidate DAG (a seeded random one without a classifier).
Graph scoring is sharded over all local devices; 1 and 8 devices give
bit-identical scores. ``set_inference_rules`` changes the rules of a loaded system.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pathlib
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from hieramas_jax import config as config_lib
from hieramas_jax import executor
from hieramas_jax.graph_scoring import validate_graph_stack
from hieramas_jax.llm import base as llm_base
from hieramas_jax.llm import preflight as llm_preflight
from hieramas_jax.models import selector as sel
from hieramas_jax.policy import HieraMASPolicy, PolicySpec, read_metadata
from hieramas_jax.results import QueryResult, grade, problem_from_text
from hieramas_jax.system import parts
from hieramas_jax.tasks.base import Problem, Task
from hieramas_jax.train import environment

# Graph-choice modes (``HieraMAS.graph_choice``).
CLASSIFIER, RANDOM = "classifier", "random"
Query = str | Problem


class HieraMAS:
  """A trained HieraMAS: per query, models per position (selector) and a DAG of roles (classifier).

  Build it with ``from_workdir``, or from a policy and its run's config.

  Attributes:
    policy: the trained decisions (``HieraMASPolicy``).
    config: the run's config (its ``inference`` and candidate pool follow ``set_inference_rules``).
    task, roles, model_names, decision_model: what the system runs on.
    encoder: the text encoder (the one training used).
    backend: the LLM backend (built on first use unless given).
    has_classifier, graph_choice (``"classifier"`` or ``"random"``), graph_choice_reason.
  """

  def __init__(self, policy: HieraMASPolicy, config: ml_collections.ConfigDict, *, task: Task | None = None,
               encoder: Any = None, backend: Any = None, workdir: str | os.PathLike[str] | None = None):
    """Builds the system; ``task``/``encoder``/``backend`` default to the config's (the backend on first use).

    ``workdir`` holds the caches (embeddings, LLM responses); None turns both off.
    """
    config = ml_collections.ConfigDict(config.to_dict() if hasattr(config, "to_dict") else config)
    if workdir is None:
      config.llm.cache = False
      config.encoder.cache = False
    self.config = config
    self.workdir = pathlib.Path(workdir).absolute() if workdir is not None else None
    self.task = task if task is not None else environment.load_task(config)
    self.roles = tuple(self.task.roles)
    self._encoder = encoder if encoder is not None else environment.make_text_encoder(
        config, self.workdir or pathlib.Path.cwd())
    self.policy = policy
    parts.check_parts(policy.spec, self.task, environment.pool_specs(config), self._encoder)
    self._sync_config()
    self._backend = backend
    self._owns_backend = backend is None  # close() only closes backends this object built
    self._worker: concurrent.futures.ThreadPoolExecutor | None = None
    if backend is not None:
      llm_base.check_models(backend, self.model_names + [self.decision_model])
      llm_preflight.preflight(backend, self.model_names)  # a dead endpoint fails here, not query by query

  @classmethod
  def from_parts(cls, config: ml_collections.ConfigDict, selector: tuple[Any, Any],
                 classifier: tuple[Any, Any] | None = None, *, encoder: Any = None,
                 sharding: jax.sharding.Sharding | None = None, devices: Sequence[jax.Device] | None = None,
                 **kwargs) -> "HieraMAS":
    """From (graphdef, params) pairs in memory (e.g. right after training) and the run's config."""
    workdir = kwargs.get("workdir")
    task = kwargs.pop("task", None) or environment.load_task(config)
    encoder = encoder or environment.make_text_encoder(config, pathlib.Path(workdir or pathlib.Path.cwd()))
    spec = PolicySpec.from_config(config, task.roles, environment.pool_specs(config), encoder.encoder_id, encoder.dim)
    option_emb = np.asarray(encoder.encode(list(spec.option_texts)), np.float32)
    policy = HieraMASPolicy(spec, selector, option_emb, classifier, sharding=sharding, devices=devices)
    return cls(policy, config, task=task, encoder=encoder, **kwargs)

  @classmethod
  def from_workdir(cls, workdir: str | os.PathLike[str], *, backend: Any = None, encoder: Any = None,
                   sharding: jax.sharding.Sharding | None = None, num_candidates: int | None = None,
                   devices: Sequence[jax.Device] | None = None,
                   overrides: Mapping[str, Any] | None = None) -> "HieraMAS":
    """Loads the trained system of a ``launch.train`` workdir.

    Args:
      workdir: the training run's workdir.
      backend: an LLM backend to use instead of the configured one.
      encoder: a text encoder instead of the configured one (it must be the one
        training used: same ``encoder_id``).
      sharding: target layout of the restored parameters (default: the first local device).
      num_candidates: K of the candidate pool (default: the trained one).
      devices: devices graph scoring is sharded over (default: all local ones).
      overrides: dotted config fields to change, e.g. ``{"llm.models": [{"name":
        "Qwen3-8B", "base_url": "http://localhost:8000/v1"}], "llm.max_concurrency": 8}``
        (see ``system.parts.apply_overrides``); what the policy was trained on cannot change.
    """
    workdir = pathlib.Path(workdir).absolute()
    meta = read_metadata(workdir)
    if "config" not in meta:
      raise ValueError(f"the stage-1 checkpoint in {workdir / 'checkpoints' / 'stage1'} has no config in its "
                       "metadata; it was not written by launch.train")
    config = config_lib.from_saved(meta["config"])
    parts.apply_overrides(config, overrides or {})
    encoder = encoder if encoder is not None else environment.make_text_encoder(config, workdir)
    trained_with = meta.get("encoder_id")
    if trained_with is not None and encoder.encoder_id != trained_with:
      raise ValueError(f"the selector in {workdir} was trained on encoder {trained_with!r}, not "
                       f"{encoder.encoder_id!r}; pass that encoder (or none, to build the configured one)")
    policy = HieraMASPolicy.load(workdir, encoder=encoder, sharding=sharding, devices=devices)
    # Overridden inference settings change the policy's rules (the rest of the config is the system's).
    rules = {name: parts.config_value(config, key) for key, name in parts.RULE_FIELDS.items() if key in (overrides or {})}
    if num_candidates is not None:
      rules["num_candidates"] = num_candidates
    if rules:
      policy = policy.with_inference_rules(**rules)
    return cls(policy, config, encoder=encoder, backend=backend, workdir=workdir)

  # ---- pieces -------------------------------------------------------------
  @property
  def model_names(self) -> list[str]:
    return list(self.policy.spec.model_names)

  @property
  def decision_model(self) -> str:
    return self.policy.spec.decision_model

  @property
  def encoder(self):
    return self._encoder

  @property
  def has_classifier(self) -> bool:
    return self.policy.has_classifier

  @property
  def graph_choice(self) -> str:
    return CLASSIFIER if self.policy.has_classifier else RANDOM

  @property
  def graph_choice_reason(self) -> str:
    return self.policy.graph_choice_reason

  @property
  def num_devices(self) -> int:
    """Devices graph scoring is sharded over (0 without a classifier)."""
    return self.policy.num_devices

  def generation_params(self) -> dict[str, Any]:
    """The request parameters every LLM call of this system sends."""
    return {"temperature": float(self.config.llm.temperature), "max_tokens": int(self.config.llm.max_tokens)}

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
      self._backend = backend
    return self._backend

  def close(self) -> None:
    """Closes a backend this object built (HTTP clients on every loop, response cache) and the worker thread."""
    if self._backend is not None and self._owns_backend:
      backend, self._backend = self._backend, None
      executor.close_backend(backend)  # clients of every loop, the worker thread's included
    if self._worker is not None:
      self._worker.shutdown(wait=True)
      self._worker = None

  def __enter__(self) -> "HieraMAS":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # ---- queries and embeddings ------------------------------------------------
  def problems(self, queries: Sequence[Query]) -> list[Problem]:
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

  def _embed(self, texts: Sequence[str]) -> np.ndarray:
    return np.asarray(self._encoder.encode(list(texts)), np.float32)

  def query_embeddings(self, queries: Sequence[Query]) -> np.ndarray:
    """Embeddings [B, D] of the query texts (the graph classifier's input)."""
    return self._embed([p.question for p in self.problems(queries)])

  def query_role_embeddings(self, queries: Sequence[Query]) -> np.ndarray:
    """Embeddings [B, R, D] of each query with each role's text (the selector's input)."""
    problems = self.problems(queries)
    texts = [environment.query_role_text(p, role) for p in problems for role in self.roles]
    return self._embed(texts).reshape(len(problems), len(self.roles), -1)

  def candidate_pool(self) -> np.ndarray:
    """The K candidate DAGs [K, N, N] scored at inference (the policy's)."""
    return self.policy.candidate_pool()

  def set_inference_rules(self, *, max_skipped_roles: int | None = None, rotate_top_n: int | None = None,
                          candidate_density_range: tuple[float, float] | None = None) -> None:
    """Changes the inference-time settings for later plans (the checkpoint's otherwise); None keeps a field.

    Args:
      max_skipped_roles: the most roles dropped per query, -1 for no cap.
      rotate_top_n: proposers rotate over this many top models, 0 for none.
      candidate_density_range: (low, high) density of the default candidate pool.
    """
    if candidate_density_range is not None:
      try:
        candidate_density_range = environment.density_bounds(candidate_density_range,
                                                              "graphs.candidate_density_range")
      except environment.ConfigError as e:
        raise ValueError(str(e)) from None
    try:
      self.policy = self.policy.with_inference_rules(max_skipped_roles=max_skipped_roles, rotate_top_n=rotate_top_n,
                                                     candidate_density_range=candidate_density_range)
    except ValueError as e:
      field = "graphs.candidate_density_range: " if candidate_density_range is not None and "density" in str(e) else ""
      raise ValueError(field + str(e)) from None
    self._sync_config()

  def _sync_config(self) -> None:
    """``config.inference`` and the candidate pool fields say what the policy does."""
    spec = self.policy.spec
    if "inference" not in self.config:
      self.config.inference = config_lib.base_config(self.config.task.name).inference
    self.config.inference.max_skipped_roles = int(spec.inference["max_skipped_roles"])
    self.config.inference.rotate_top_n = int(spec.inference["rotate_top_n"])
    self.config.graphs.candidate_density_range = tuple(spec.candidate_pool["density_range"])
    self.config.graphs.num_candidates = int(spec.candidate_pool["size"])

  # ---- decisions ------------------------------------------------------------
  def selector_logits(self, queries: Sequence[Query]) -> np.ndarray:
    """The selector's unmasked logits [B, R, P+1, M+1] (option M is ``skip``)."""
    return self.policy.logits(self.query_role_embeddings(queries))

  def _actions(self, problems: Sequence[Problem], *, fixed_model: str | None = None, key: jax.Array | None = None,
               temperature: float = 1.0, query_role_emb: Any = None) -> np.ndarray:
    if fixed_model:
      if fixed_model not in self.model_names:
        raise ValueError(f"fixed_model={fixed_model!r} is not in the pool {self.model_names}")
      positions = self.policy.spec.num_proposers + 1
      return np.full((len(problems), len(self.roles), positions), self.model_names.index(fixed_model), np.int64)
    emb = self.query_role_embeddings(problems) if query_role_emb is None else query_role_emb
    if len(emb) != len(problems):
      raise ValueError(f"{len(emb)} query+role embeddings for {len(problems)} queries")
    return self.policy.act(emb, key, temperature, query_ids=[p.uid for p in problems])

  def assignments(self, queries: Sequence[Query], *, fixed_model: str | None = None) -> list[list[list[str | None]]]:
    """Per query, per role, the model of each position [R][P+1] (None = skip).

    The selector's argmax under the inference rules (``inference_rules``);
    ``fixed_model`` puts that one model at every position (the no-selection ablation).
    """
    return sel.actions_to_assignment(self._actions(self.problems(queries), fixed_model=fixed_model), self.model_names)

  def score_graphs(self, queries_or_embeddings: Any, adjacency: Any) -> np.ndarray:
    """Classifier logits [B, K] of candidate DAGs for each query.

    Args:
      queries_or_embeddings: texts / Problems, or a float array [B, D] of
        precomputed query embeddings (this system's encoder).
      adjacency: [K, N, N] shared by all queries, or [B, K, N, N] per query.
    Returns:
      scores [B, K] (higher: a more promising DAG); identical on any number of devices.
    """
    x = queries_or_embeddings
    if not (isinstance(x, (np.ndarray, jax.Array)) and np.issubdtype(x.dtype, np.floating)):
      x = self.query_embeddings(x)
    return self.policy.score(x, adjacency)

  def _choose(self, problems: Sequence[Problem], pool: Any, random_graph: bool, query_emb: Any = None):
    """(chosen DAGs [B, N, N], their scores [B], their pool indices [B])."""
    pool = self.candidate_pool() if pool is None else validate_graph_stack(pool, len(self.roles),
                                                                           batch=len(problems))
    b = len(problems)
    if random_graph or not self.policy.has_classifier:
      index = self.policy.random_graph_indices([p.uid for p in problems], pool.shape[-3])
      scores = np.full(b, np.nan, np.float32)
    else:
      emb = self.query_embeddings(problems) if query_emb is None else query_emb
      all_scores = self.policy.score(emb, pool)
      index = all_scores.argmax(axis=1) if b else np.zeros(0, np.int64)
      scores = all_scores[np.arange(b), index]
    chosen = pool[np.arange(b), index] if pool.ndim == 4 else pool[index]
    return chosen, scores, index

  def choose_graphs(self, queries: Sequence[Query], pool: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The best-scoring DAG per query [B, N, N] and its score [B] (NaN when drawn at random).

    ``pool``: [K, N, N] or [B, K, N, N] candidates (default: ``candidate_pool()``).
    """
    chosen, scores, _ = self._choose(self.problems(queries), pool, random_graph=False)
    return chosen, scores

  # ---- planning and running -----------------------------------------------
  def plan(self, queries: Query | Sequence[Query], *, pool: Any = None, fixed_model: str | None = None,
           random_graph: bool = False, key: jax.Array | None = None, temperature: float = 1.0,
           query_emb: Any = None, query_role_emb: Any = None) -> executor.Plan | list[executor.Plan]:
    """Per query: the models per position and the chosen DAG, as executor plans (with the DAG's score).

    Args:
      queries: texts or Problems (one alone gives one Plan).
      pool: candidate DAGs [K, N, N] or [B, K, N, N] (default: ``candidate_pool()``).
      fixed_model: one model at every position instead of the selector's choice (ablation).
      random_graph: a seeded random candidate instead of the classifier's best (ablation).
      key, temperature: sample the models from the selector at ``temperature``
        instead of its argmax under the inference rules.
      query_emb, query_role_emb: precomputed embeddings [B, D] / [B, R, D] of
        the queries (this system's encoder); the encoder is not called for them.
    """
    single = isinstance(queries, (str, Problem))
    problems = self.problems([queries] if single else queries)
    actions = self._actions(problems, fixed_model=fixed_model, key=key, temperature=temperature,
                            query_role_emb=query_role_emb)
    chosen, scores, index = self._choose(problems, pool, random_graph, query_emb)
    out = []
    for p, row, adj, s, i in zip(problems, sel.actions_to_assignment(actions, self.model_names), chosen, scores,
                                 index):
      out.append(executor.Plan(problem=p, roles=self.roles, assignment=[list(r) for r in row],
                               adjacency=np.asarray(adj), decision_model=self.decision_model, sample=0, score=float(s),
                               graph_index=int(i)))
    return out[0] if single else out

  async def aplan(self, queries: Query | Sequence[Query], **kwargs) -> executor.Plan | list[executor.Plan]:
    """``plan`` off the event loop (the encoder and the models run in a worker thread)."""
    return await asyncio.get_running_loop().run_in_executor(self._thread(), lambda: self.plan(queries, **kwargs))

  def _planned(self, queries, kwargs) -> tuple[list[executor.Plan], bool]:
    """(plans, whether one query was given alone)."""
    if isinstance(queries, executor.Plan):
      return [queries], True
    if isinstance(queries, (str, Problem)):
      return [self.plan(queries, **kwargs)], True
    queries = list(queries)
    if queries and all(isinstance(q, executor.Plan) for q in queries):
      return queries, False
    if any(isinstance(q, executor.Plan) for q in queries):
      raise TypeError("run() takes either queries (texts / Problems) or plan() items, not a mix")
    return self.plan(queries, **kwargs), False

  def _graded(self, results: list[QueryResult], graded: bool) -> list[QueryResult]:
    if graded:  # a query with a failed call is an error record: never graded (see QueryResult.failed)
      grade(self.task, results)
    return results

  def run(self, queries: Query | executor.Plan | Sequence[Query | executor.Plan], *,
          trace_path: str | os.PathLike[str] | None = None, grade: bool = True,
          **plan_kwargs) -> QueryResult | list[QueryResult]:
    """Plans (unless given ``plan``'s output) and executes the queries.

    Works inside a running event loop too (it then runs in a worker thread;
    ``await arun(...)`` does not block the loop).

    Args:
      queries: texts, Problems, or the output of ``plan`` (run as they are); one
        alone gives one QueryResult.
      trace_path: a JSONL file that receives one line per LLM call.
      grade: extract each ``answer`` and grade those of problems that have a reference answer (``correct``).
      **plan_kwargs: ``plan``'s options (pool, fixed_model, random_graph, key, temperature, embeddings).
    Returns:
      one QueryResult per query, in order (its ``plan`` the plan that ran).
    """
    try:
      asyncio.get_running_loop()
    except RuntimeError:
      pass
    else:  # a notebook or an async handler: run on the worker thread's own loop
      return self._thread().submit(self.run, queries, trace_path=trace_path, grade=grade, **plan_kwargs).result()
    planned, single = self._planned(queries, plan_kwargs)
    backend = self.backend
    parts.register_with_simulator(backend, [p.problem for p in planned])
    results = executor.execute(planned, backend, self.task, params=self.generation_params(), trace_path=trace_path)
    out = self._graded(results, grade)
    return out[0] if single else out

  async def arun(self, queries: Query | executor.Plan | Sequence[Query | executor.Plan], *,
                 trace_path: str | os.PathLike[str] | None = None, grade: bool = True,
                 **plan_kwargs) -> QueryResult | list[QueryResult]:
    """``run`` for an event loop: planning and grading in a worker thread, the LLM calls on this loop."""
    loop = asyncio.get_running_loop()
    planned, single = await loop.run_in_executor(self._thread(), self._planned, queries, plan_kwargs)
    backend = await loop.run_in_executor(self._thread(), lambda: self.backend)
    parts.register_with_simulator(backend, [p.problem for p in planned])
    results = await executor.execute_async(planned, backend, self.task, params=self.generation_params(),
                                           trace_path=trace_path)
    out = await loop.run_in_executor(self._thread(), self._graded, results, grade)
    return out[0] if single else out

  def _thread(self) -> concurrent.futures.ThreadPoolExecutor:
    if self._worker is None:
      self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hieramas")
    return self._worker
