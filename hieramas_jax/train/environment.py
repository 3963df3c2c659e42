"""Everything host-side a training run needs, built from a config and checked first.

``build_environment`` validates the config (pool, keys, sizes, density range)
before any LLM call, loads the task and its splits, builds the LLM backend (the
simulated pool or OpenAI-compatible endpoints) behind the response cache, and
embeds the query, query+role and model-profile texts once (on-disk cache).

In a multi-host run every process builds its own backend and checks its own
endpoints (a failure on any process is raised on every one); process 0 embeds
first, filling the workdir's embedding cache, and the others then read it.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Sequence

import ml_collections
import numpy as np

from hieramas_jax import distributed, executor, graphs
from hieramas_jax.llm import base as llm_base
from hieramas_jax.llm import preflight as llm_preflight
from hieramas_jax.llm import pool as llm_pool
from hieramas_jax.llm import routing as llm_routing
from hieramas_jax.tasks.base import Problem, RoleSpec, Task

SKIP_PROFILE = "skip: make no call at this position; costs nothing and gives no answer."


def option_texts(specs: Sequence[llm_pool.ModelSpec]) -> tuple[str, ...]:
  """The selector's option texts, the one definition: each model's profile (its name without one), then skip.

  Training embeds them (``Environment.option_emb``) and ``PolicySpec.option_texts``
  stores them, so the two agree by construction.
  """
  return tuple(s.profile or s.name for s in specs) + (SKIP_PROFILE,)


class ConfigError(ValueError):
  """A config that cannot run; raised before any LLM call."""


@dataclasses.dataclass
class Environment:
  """The task, its splits, the LLM backend and the embeddings of one run."""

  config: ml_collections.ConfigDict
  task: Task
  roles: tuple[RoleSpec, ...]
  specs: list[llm_pool.ModelSpec]
  backend: Any  # llm Backend (cached where configured)
  splits: dict[str, list[Problem]]
  encoder_id: str
  option_emb: np.ndarray  # [M + 1, D], skip last
  query_emb: dict[str, np.ndarray]  # split -> [n, D]
  query_role_emb: dict[str, np.ndarray]  # split -> [n, R, D]
  model_allowed: np.ndarray  # [M] bool
  gives_answer: np.ndarray  # [R] bool
  workdir: pathlib.Path

  @property
  def model_names(self) -> list[str]:
    return [s.name for s in self.specs]

  @property
  def num_roles(self) -> int:
    return len(self.roles)

  @property
  def decision_model(self) -> str:
    return self.config.llm.decision_model

  def generation_params(self) -> dict[str, Any]:
    return {"temperature": float(self.config.llm.temperature), "max_tokens": int(self.config.llm.max_tokens)}

  def close(self) -> None:
    """Closes the backend: its HTTP sessions and response cache."""
    executor.close_backend(self.backend)


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def pool_specs(config: ml_collections.ConfigDict) -> list[llm_pool.ModelSpec]:
  """The model pool: the paper's pool with config overrides, or the config's models alone."""
  if config.llm.pool not in ("paper", "", "config"):
    raise ConfigError(f"llm.pool={config.llm.pool!r}; use 'paper' (the paper's pool plus llm.models overrides) "
                      "or 'config' (exactly llm.models)")
  start_from = llm_pool.PAPER_POOL if config.llm.pool == "paper" else ()
  specs = llm_pool.merge_pool(start_from, config.llm.models)  # the one parser: a new model without prices fails
  return llm_routing.usable_specs(specs, config.llm.backend)  # paper models without an endpoint/file dropped


def _number(field: str, value: Any) -> float:
  """``value`` as a float; ConfigError when it is no number (a string or list from a config file)."""
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
    raise ConfigError(f"{field}={value!r}; it must be a number")
  return float(value)


def _whole(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_range(field: str, value: Any, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False, why: str = "") -> None:
  """ConfigError unless ``low <(=) value <(=) high`` (a None bound is no bound)."""
  x = _number(field, value)
  too_low = low is not None and (x <= low if low_open else x < low)
  too_high = high is not None and (x >= high if high_open else x > high)
  if too_low or too_high:
    if low is not None and high is not None:
      wanted = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
      wanted = f"{'>' if low_open else '>='} {low:g}"
    else:
      wanted = f"{'<' if high_open else '<='} {high:g}"
    raise ConfigError(f"{field}={value!r}; it must be {wanted}{f' ({why})' if why else ''}")


def _check_choice(field: str, value: Any, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ConfigError(f"{field}={value!r}; choose one of {', '.join(repr(c) for c in choices)}")


DENSITY_FIELDS = ("density_range", "stage2_density_range", "candidate_density_range")  # of config.graphs


def density_bounds(value: Any, field: str = "graphs.density_range") -> tuple[float, float]:
  """A density range (``field``) as (low, high) with 0 <= low <= high <= 1, or ConfigError saying how to write it."""
  how = f"give a pair (low, high) with 0 <= low <= high <= 1, e.g. --config.{field}='(0.3, 0.7)'"
  if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
    raise ConfigError(f"{field}={value!r}; {how}")
  lo, hi = (_number(field, v) for v in value)
  if not 0.0 <= lo <= hi <= 1.0:
    raise ConfigError(f"{field}={tuple(value)!r}; {how}")
  return lo, hi


def validate_config(config: ml_collections.ConfigDict, num_roles: int | None = None) -> list[llm_pool.ModelSpec]:
  """Checks a config; raises one ConfigError naming the problem and the fix. Returns the pool."""
  c = config
  _check_values(c)
  if c.llm.backend not in llm_routing.BACKEND_KINDS:
    raise ConfigError(f"llm.backend={c.llm.backend!r}; choose 'sim' (offline simulated pool), 'openai' or 'local' "
                      "(model files run in this process)")
  if c.stages not in ("both", "stage1", "stage2"):
    raise ConfigError(f"stages={c.stages!r}; choose 'both', 'stage1' or 'stage2'")
  specs = pool_specs(c)
  try:
    llm_pool.validate_pool(specs, check_keys=c.llm.backend == "openai")
  except llm_base.ConfigError as e:
    raise ConfigError(str(e)) from None
  names = {s.name for s in specs}
  try:  # each entry against the backend serving it (its own `backend` field, else llm.backend)
    llm_routing.check_routes(specs, c.llm.backend)
  except llm_base.ConfigError as e:
    raise ConfigError(str(e)) from None
  if c.llm.decision_model not in names:
    raise ConfigError(f"llm.decision_model={c.llm.decision_model!r} is not in the pool {sorted(names)}")
  unknown = sorted(set(c.llm.exclude_models) - names)
  if unknown:
    raise ConfigError(f"llm.exclude_models names unknown model(s) {unknown}; the pool has {sorted(names)}")
  if len(set(c.llm.exclude_models)) >= len(names) and not c.selector.synthesizer_may_skip:
    raise ConfigError("every model is excluded and synthesizers may not skip: nothing can be selected")
  for field, value, low in [("task.num_train", c.task.num_train, 1), ("task.num_val", c.task.num_val, 1),
                            ("task.num_test", c.task.num_test, 1), ("selector.num_proposers", c.selector.num_proposers, 0),
                            ("stage1.steps", c.stage1.steps, 0), ("stage1.batch_size", c.stage1.batch_size, 1),
                            ("stage2.graphs_per_query", c.stage2.graphs_per_query, 2),
                            ("stage2.top_k", c.stage2.top_k, 1), ("stage2.epochs", c.stage2.epochs, 0),
                            ("stage2.samples_per_graph", c.stage2.samples_per_graph, 1),
                            ("stage1.val_samples", c.stage1.val_samples, 1),
                            ("stage2.batch_size", c.stage2.batch_size, 1),
                            ("graphs.train_pool_size", c.graphs.train_pool_size, 1),
                            ("graphs.num_candidates", c.graphs.num_candidates, 1),
                            ("checkpoint.every_steps", c.checkpoint.every_steps, 1)]:
    _check_range(field, value, low)
  if c.stage1.batch_size > c.task.num_train:
    raise ConfigError(f"stage1.batch_size={c.stage1.batch_size} exceeds task.num_train={c.task.num_train}; "
                      "lower the batch or add training problems")
  if c.stage2.top_k >= c.stage2.graphs_per_query:
    raise ConfigError(f"stage2.top_k={c.stage2.top_k} must be below stage2.graphs_per_query="
                      f"{c.stage2.graphs_per_query}, or every graph would be positive")
  if not 0.0 <= c.stage1.alpha <= 1.0:
    raise ConfigError(f"stage1.alpha={c.stage1.alpha}; it must lie in [0, 1]")
  if c.stage1.baseline not in ("none", "ema", "batch_mean", "group"):
    raise ConfigError(f"stage1.baseline={c.stage1.baseline!r}; choose 'none', 'ema', 'batch_mean' or 'group'")
  if c.stage1.baseline == "group" and (c.stage1.group_size < 2 or c.stage1.batch_size % c.stage1.group_size):
    raise ConfigError(f"stage1.baseline='group' needs group_size >= 2 dividing batch_size; got group_size="
                      f"{c.stage1.group_size}, batch_size={c.stage1.batch_size}")
  if c.stage1.temperature_end <= 0 or c.stage1.temperature_start <= 0:
    raise ConfigError("stage1 temperatures must be > 0")
  if c.stage1.lr_schedule not in ("constant", "cosine"):
    raise ConfigError(f"stage1.lr_schedule={c.stage1.lr_schedule!r}; choose 'cosine' (decay to 0) or 'constant'")
  if c.stage1.run_skip_credit not in ("role", "system", "role_vs_system"):
    raise ConfigError(f"stage1.run_skip_credit={c.stage1.run_skip_credit!r}; choose 'role' (as published), "
                      "'system' or 'role_vs_system'")
  if not 0.0 <= c.stage1.run_skip_warmup <= 1.0:
    raise ConfigError(f"stage1.run_skip_warmup={c.stage1.run_skip_warmup}; it is a fraction of stage1.steps "
                      "and must lie in [0, 1]")
  if c.stage1.keep_margin < 0:
    raise ConfigError(f"stage1.keep_margin={c.stage1.keep_margin}; it counts standard errors and must be >= 0 "
                      "(0 keeps the parameters of the highest validation reward)")
  if num_roles is not None:
    for name in DENSITY_FIELDS:
      if name in c.graphs:
        lo, hi = density_bounds(c.graphs[name], f"graphs.{name}")
        try:
          graphs.edge_count_range(num_roles, (lo, hi))
        except ValueError as e:
          raise ConfigError(f"graphs.{name}: {e}") from None
  if "inference" in c:
    if not _whole(c.inference.max_skipped_roles) or c.inference.max_skipped_roles < -1:
      raise ConfigError(f"inference.max_skipped_roles={c.inference.max_skipped_roles!r}; give the most roles "
                        "inference may drop (0 drops none) or -1 for no cap")
    if not _whole(c.inference.rotate_top_n) or c.inference.rotate_top_n < 0:
      raise ConfigError(f"inference.rotate_top_n={c.inference.rotate_top_n!r}; give how many top models the "
                        "proposers rotate over (e.g. 2), or 0 to give each proposer its own argmax")
  return specs


def _check_values(c: ml_collections.ConfigDict) -> None:
  """Sizes, rates and choices that make no run (before the pool and the cross-field checks)."""
  from hieramas_jax import encoders  # pylint: disable=g-import-not-at-top

  for field, value in [("selector.hidden_dim", c.selector.hidden_dim), ("gcn.role_dim", c.gcn.role_dim),
                       ("gcn.hidden_dim", c.gcn.hidden_dim), ("gcn.num_layers", c.gcn.num_layers),
                       ("gcn.mlp_dim", c.gcn.mlp_dim), ("llm.max_tokens", c.llm.max_tokens),
                       ("llm.max_concurrency", c.llm.max_concurrency), ("stage1.eval_every", c.stage1.eval_every),
                       ("stage1.group_size", c.stage1.group_size),
                       ("checkpoint.max_to_keep", c.checkpoint.max_to_keep)]:
    _check_range(field, value, 1)
  for field, value in [("stage1.learning_rate", c.stage1.learning_rate),
                       ("stage2.learning_rate", c.stage2.learning_rate), ("stage1.grad_clip", c.stage1.grad_clip),
                       ("llm.timeout_s", c.llm.timeout_s)]:
    _check_range(field, value, 0, low_open=True)
  for field, value in [("stage1.weight_decay", c.stage1.weight_decay),
                       ("stage2.weight_decay", c.stage2.weight_decay), ("stage1.entropy_coef", c.stage1.entropy_coef),
                       ("reward.cost_solved", c.reward.cost_solved),
                       ("reward.cost_failed", c.reward.cost_failed),
                       ("reward.stage2_cost_solved", c.reward.stage2_cost_solved),
                       ("llm.temperature", c.llm.temperature), ("llm.max_retries", c.llm.max_retries),
                       ("llm.sim_latency_s", c.llm.sim_latency_s)]:
    _check_range(field, value, 0)
  _check_range("stage1.ema_decay", c.stage1.ema_decay, 0, 1, high_open=True)
  if "max_failed_fraction" in c.llm:
    _check_range("llm.max_failed_fraction", c.llm.max_failed_fraction, 0, 1,
                 why="the share of a step's queries whose LLM calls may fail before the run stops")
  _check_choice("reward.system_cost", c.reward.system_cost, ("total", "decision"))
  _check_choice("gcn.impl", c.gcn.impl, ("dense", "segment"))
  _check_choice("selector.skip_head", c.selector.skip_head, ("gate", "shared"))
  _check_choice("encoder.kind", c.encoder.kind, encoders.ENCODER_KINDS)
  for field in ("llm.exclude_models", "llm.models"):
    value = c.llm[field.split(".")[1]]
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
      raise ConfigError(f"{field}={value!r}; it must be a list (on the command line: "
                        f"--config.{field}='[...]' or a comma-separated list)")
  for name in DENSITY_FIELDS:
    if name in c.graphs:
      density_bounds(c.graphs[name], f"graphs.{name}")


# ---------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------


def load_task(config: ml_collections.ConfigDict) -> Task:
  from hieramas_jax import tasks  # pylint: disable=g-import-not-at-top

  name = config.task.name
  if config.task.source == "synthetic":
    if name not in ("math", "synthetic"):
      raise ConfigError(f"task.source='synthetic' exists for MATH-format tasks only, not {name!r}; "
                        "set task.source='files'")
    return tasks.get_task("synthetic")
  if config.task.source != "files":
    raise ConfigError(f"task.source={config.task.source!r}; choose 'synthetic' or 'files'")
  return tasks.get_task(name)


def load_splits(config: ml_collections.ConfigDict, task: Task) -> dict[str, list[Problem]]:
  """Disjoint train / val / test problem lists of the configured sizes (seeded)."""
  c = config.task
  sizes = {"train": int(c.num_train), "val": int(c.num_val), "test": int(c.num_test)}
  if c.source == "synthetic":
    return {split: task.load(split, n=n, seed=config.seed) for split, n in sizes.items()}
  kwargs = {"path": c.data_path} if c.data_path else {}
  try:
    problems = task.load("test", **kwargs)
  except FileNotFoundError as e:
    raise ConfigError(f"{e}. Offline runs without files: use configs/math.py (synthetic problems)") from None
  except ValueError as e:  # the loaders name the file and line of a record they cannot read
    raise ConfigError(f"task {c.name!r}: {e}") from None
  need = sum(sizes.values())
  if len(problems) < need:
    raise ConfigError(f"task {c.name!r} has {len(problems)} problems, fewer than train+val+test={need}; "
                      "lower task.num_train/num_val/num_test")
  order = np.random.default_rng(config.seed).permutation(len(problems))
  picked = [problems[i] for i in order[:need]]
  return {"train": picked[:sizes["train"]],
          "val": picked[sizes["train"]:sizes["train"] + sizes["val"]],
          "test": picked[sizes["train"] + sizes["val"]:]}


def make_backend(config: ml_collections.ConfigDict, specs: Sequence[llm_pool.ModelSpec], task: Task,
                 problems: Sequence[Problem], workdir: pathlib.Path):
  """The LLM backend of a run (with the response cache in the workdir when configured)."""
  from hieramas_jax.llm import cache as llm_cache  # pylint: disable=g-import-not-at-top

  def build_sim(group: list[llm_pool.ModelSpec]):
    from hieramas_jax.llm import sim  # pylint: disable=g-import-not-at-top
    effects = {}
    for role, value in dict(config.llm.sim_role_effects).items():
      solo, gain_scale = value
      effects[role] = sim.RoleEffect(float(solo), float(gain_scale))
    world = sim.make_world(config.llm.get("sim_world", "invented"), task=task.name, problems=problems,
                           seed=config.llm.sim_seed, pool=group, role_effects=effects)
    return sim.SimulatedBackend(world, task, problems, realtime=config.llm.sim_latency_s > 0,
                                latency_scale=float(config.llm.sim_latency_s))

  def build_openai(group: list[llm_pool.ModelSpec]):
    from hieramas_jax.llm import openai_backend  # pylint: disable=g-import-not-at-top
    return openai_backend.OpenAIBackend(
        group, max_concurrency=config.llm.max_concurrency, timeout_s=config.llm.timeout_s,
        retry=openai_backend.RetryPolicy(max_retries=config.llm.max_retries),
        seed_from_sample_index=bool(config.llm.send_seed))

  # Each model goes to the backend its entry names (else llm.backend); one kind: that backend alone.
  backend = llm_routing.build_routed(specs, config.llm.backend, {
      "sim": build_sim, "openai": build_openai, "local": llm_routing.build_local})
  if config.llm.cache:
    backend = llm_cache.CachedBackend(backend, workdir / "llm_cache.sqlite")
  return backend


def query_role_text(problem: Problem, role: RoleSpec) -> str:
  return f"Role: {role.name}. {role.description}\nQuery: {problem.question}"


def make_text_encoder(config: ml_collections.ConfigDict, workdir: pathlib.Path):
  from hieramas_jax import encoders  # pylint: disable=g-import-not-at-top

  kwargs: dict[str, Any] = {}
  if config.encoder.kind == "sentence_transformer":
    kwargs["model_dir"] = config.encoder.path
  if config.encoder.kind == "openai":
    if config.encoder.model:
      kwargs["model"] = config.encoder.model
    if config.encoder.base_url:
      kwargs["base_url"] = config.encoder.base_url
    kwargs["api_key_env"] = config.encoder.api_key_env or None
    if config.encoder.dim:
      kwargs["dim"] = int(config.encoder.dim)
  cache_dir = workdir / "embeddings" if config.encoder.cache else None
  return encoders.make_encoder(config.encoder.kind, cache_dir=cache_dir, **kwargs)


def build_environment(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                      backend: Any = None, encoder: Any = None) -> Environment:
  """Validates ``config`` and builds the run's environment (no LLM call is made here).

  ``backend`` / ``encoder`` replace the configured ones (tests, custom simulators).
  """
  workdir = pathlib.Path(workdir).absolute()
  task = load_task(config)
  roles = tuple(task.roles)
  specs = validate_config(config, num_roles=len(roles))
  workdir.mkdir(parents=True, exist_ok=True)
  splits = load_splits(config, task)
  all_problems = [p for split in splits.values() for p in split]
  built = backend is None
  if built:
    backend = make_backend(config, specs, task, all_problems, workdir)

  def check_endpoints() -> None:  # one call per endpoint before any work: a dead endpoint is one EndpointError
    llm_base.check_models(backend, [s.name for s in specs])
    llm_preflight.preflight(backend, [s.name for s in specs])

  try:  # each process checks the endpoints it calls
    distributed.alike(check_endpoints, "endpoints checked")
  except Exception:
    if built:
      executor.close_backend(backend)  # no HTTP session outlives a failed start
    raise

  def embed_everything():
    """(encoder id, option, query and query+role embeddings), with the configured encoder unless one was given."""
    text_encoder = make_text_encoder(config, workdir) if encoder is None else encoder

    def embed(texts):
      return np.asarray(text_encoder.encode(list(texts)), np.float32)

    try:
      option_emb = embed(option_texts(specs))
      query_emb, query_role_emb = {}, {}
      for split, problems in splits.items():
        query_emb[split] = embed([p.question for p in problems])
        qr = embed([query_role_text(p, r) for p in problems for r in roles])
        query_role_emb[split] = qr.reshape(len(problems), len(roles), -1)
    finally:
      if encoder is None and hasattr(text_encoder, "close"):
        text_encoder.close()  # its SQLite cache file: everything is embedded now
    return text_encoder.encoder_id, option_emb, query_emb, query_role_emb

  # Process 0 alone embeds (and alone opens the on-disk cache); the others receive its arrays: no text is paid
  # twice and no second host writes the SQLite file.
  encoder_id, option_emb, query_emb, query_role_emb = distributed.on_primary(embed_everything,
                                                                             "texts embedded by process 0")
  excluded = set(config.llm.exclude_models)
  return Environment(
      config=config, task=task, roles=roles, specs=list(specs), backend=backend, splits=splits,
      encoder_id=encoder_id, option_emb=option_emb, query_emb=query_emb,
      query_role_emb=query_role_emb,
      model_allowed=np.array([s.name not in excluded for s in specs], bool),
      gives_answer=np.array([r.gives_answer for r in roles], bool), workdir=workdir)
