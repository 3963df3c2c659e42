"""A trained HieraMAS against the registered baselines on a held-out split: rows for the report (launch.evaluate).

Every method runs on the same problems (the split that training held out: the
config's task, sizes and seed), the same LLM backend (the run's response cache
in the workdir) and the same task grader. :func:`evaluate` writes to ``out``
(default ``<workdir>/eval``): table.md, table.csv, results.json, pareto.png
(accuracy against cost, Pareto front, HieraMAS highlighted) and topologies.png
(the models and DAG HieraMAS chose for the first few queries).

A query with any failed LLM call is an error record: counted in the table's
``failed`` column, never graded. A method whose failed queries exceed
``llm.max_failed_fraction`` (or are all of them) stops the evaluation.

The methods come from ``baselines.METHODS`` (or the ``registry`` given): each
method's settings are filled from flag values (``flag_values``, e.g.
``{"sc_samples": 3}``) and the config (see ``baselines.options``). "The
selector's models" are its argmax under the config's inference section
(inference.max_skipped_roles, inference.rotate_top_n), the rules HieraMAS.plan
applies; graphs.candidate_density_range gives the candidate DAGs the classifier
scores and the random-DAG baselines' densities.

On several processes (a multi-host run joined through ``hieramas_jax.distributed``)
every process runs :func:`evaluate` alike: each method's queries are split by
process (``baselines.MethodContext``), each process calls its own endpoints and
gets every result back, so every row is the one a single process computes;
process 0 alone logs, draws the topologies and writes the report, and every
process returns its content.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import ml_collections
import numpy as np

from hieramas_jax import baselines, distributed, executor, report
from hieramas_jax.baselines import options as options_lib
from hieramas_jax.llm import base as llm_base
from hieramas_jax.train import environment


class EvaluationError(ValueError):
  """An evaluation request that cannot run (unknown method, model, split...)."""


# Failures a user fixes (endpoints, keys, config, the request, a missing run, failed calls): one line, no traceback.
EXPECTED_FAILURES = (EvaluationError, environment.ConfigError, llm_base.ConfigError, executor.FailedCallsError,
                     FileNotFoundError)


@dataclasses.dataclass(frozen=True)
class PlannedRow:
  """One row of the report: a registered method with its resolved settings."""

  name: str
  setup: str
  method: baselines.Method
  settings: Any


def parse_methods(text: str | Sequence[str] | None, registry: baselines.Registry | None = None) -> list[str]:
  """Method names from a comma list ('all' or empty: every method), in the registry's order."""
  names = (registry or baselines.METHODS).names()
  if text is None:
    return names
  items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
  if not items or items == ["all"]:
    return names
  unknown = sorted(set(items) - set(names))
  if unknown:
    raise EvaluationError(f"unknown method(s) {unknown}; choose from: {', '.join(names)} (or 'all')")
  return [m for m in names if m in items]


def resolve_flags(registry: baselines.Registry, flag_values: Mapping[str, Any] | None,
                  config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Every method flag's value: the given one, else its default; an empty one filled from its config field."""
  flags = registry.flags()
  unknown = sorted(set(flag_values or {}) - {f.name for f in flags})
  if unknown:
    raise EvaluationError(f"unknown method flag(s) {unknown}; the registered methods take: "
                          f"{', '.join(f.name for f in flags)}")
  resolved = {}
  for flag in flags:
    value = (flag_values or {}).get(flag.name, flag.default)
    if value in (None, "") and flag.config:
      value = options_lib.config_value(config, flag.config)
    resolved[flag.name] = value
  return resolved


def _check_models(value: Any, pool: Sequence[str], what: str) -> None:
  for name in ([value] if isinstance(value, str) else list(value or ())):
    if name not in pool:
      raise EvaluationError(f"{what}={name!r} is not in the model pool {list(pool)}; pick one of those")


def plan_rows(registry: baselines.Registry, chosen: Sequence[str], flags: Mapping[str, Any],
              config: ml_collections.ConfigDict, pool: Sequence[str], has_classifier: bool) -> list[PlannedRow]:
  """The report's rows: each chosen method's settings (one row per pool model where the method says so)."""
  for flag in registry.flags():
    if flag.pool_model:
      _check_models(flags[flag.name], pool, flag.name)
  rows: list[PlannedRow] = []
  for name in chosen:
    method = registry.get(name)
    try:
      settings = options_lib.resolve(method.settings, flags, config, method.presets)
      variants = ([dataclasses.replace(settings, **{method.each_pool_model: model}) for model in pool]
                  if method.each_pool_model else [settings])
    except (TypeError, ValueError) as e:
      raise EvaluationError(f"method {name}: {e}") from e
    for field in dataclasses.fields(settings):
      opt = options_lib.option_of(field)
      if opt and opt.pool_model and field.name != method.each_pool_model:
        _check_models(getattr(settings, field.name), pool, opt.flag or opt.config or field.name)
    for variant in variants:
      if any(r.method.function is method.function and r.settings == variant for r in rows):
        continue  # the same calls as a row already planned (e.g. single[m] and single): no duplicate row
      setup = method.describe(variant)
      if method.uses_classifier and not has_classifier:
        setup += " [no classifier: seeded random DAG]"
      rows.append(PlannedRow(method.row_name(variant), setup, method, variant))
  return rows


def _warn_if_split_differs(config: ml_collections.ConfigDict, trained: ml_collections.ConfigDict | None) -> None:
  if trained is None:
    return
  keys = [("seed",), ("task", "name"), ("task", "source"), ("task", "num_train"), ("task", "num_val"),
          ("task", "num_test"), ("task", "data_path")]
  for key in keys:
    a, b = config, trained
    try:
      for k in key:
        a, b = a[k], b[k]
    except (KeyError, AttributeError):
      continue
    if a != b:
      logging.warning("--config has %s=%r but the run was trained with %r: the evaluated split may differ from "
                      "(or overlap) what training held out", ".".join(key), a, b)


def _use_inference_rules(config: ml_collections.ConfigDict, system, log: Callable[[str], None]) -> None:
  """Applies the --config's inference-time settings to the loaded system, saying when they differ from the run's.

  They are the ``inference`` section and ``graphs.candidate_density_range`` (the
  candidate pool and the random-DAG baselines); nothing the checkpoints hold.
  """
  wanted, trained = {}, {}
  if "inference" in config:
    for key in ("max_skipped_roles", "rotate_top_n"):
      wanted[key], trained[key] = int(config.inference[key]), system.config.inference.get(key)
  if "candidate_density_range" in config.graphs:
    key = "candidate_density_range"
    wanted[key] = tuple(float(x) for x in config.graphs[key])
    trained[key] = tuple(float(x) for x in system.config.graphs[key])
  if wanted != trained:
    log(f"inference settings from --config {wanted} replace the trained run's {trained}")
  system.set_inference_rules(**wanted)


def _topology_views(system, problems, verdicts) -> list[report.TopologyView]:
  if not problems:
    return []
  views = []
  for i, plan in enumerate(system.plan(problems)):
    score = None if not np.isfinite(plan.score) else float(plan.score)  # NaN: a random DAG
    views.append(report.TopologyView(
        question=plan.problem.question, roles=[r.name for r in plan.roles],
        assignment=[list(row) for row in plan.assignment], adjacency=np.asarray(plan.adjacency).astype(int),
        decision_model=plan.decision_model, score=score,
        solved=None if verdicts is None else verdicts[i]))
  return views


def run_rows(rows: Sequence[PlannedRow], ctx: baselines.MethodContext, max_failed: float, split: str,
             log: Callable[[str], None]) -> tuple[list[report.MethodRow], dict[str, list[bool | None]]]:
  """Runs every planned row on the context; the report's rows and each row's per-query verdicts."""
  summaries: list[report.MethodRow] = []
  verdicts_by_row: dict[str, list[bool | None]] = {}
  for row in rows:
    t = time.perf_counter()
    results = list(row.method.function(ctx, row.settings))
    wall = time.perf_counter() - t
    # Accuracies over different few surviving queries would not compare: stop instead of reporting them.
    executor.check_failures(results, max_failed, f"evaluation of {row.name} ({split} split)")
    summary = report.summarize(row.name, ctx.problems, results, ctx.task, setup=row.setup, wall_s=wall)
    verdicts_by_row[row.name] = [r.correct for r in results]
    summaries.append(summary)
    log(f"{row.name:28s} accuracy {summary.accuracy:.3f}  cost ${summary.cost_usd:.6f}  calls {summary.calls:.2f}  "
        f"latency {summary.latency_s:.2f}s  failed {summary.failed}  truncated {summary.truncated}  ({wall:.1f}s)")
  return summaries, verdicts_by_row


def _load_problems(config: ml_collections.ConfigDict, split: str, limit: int):
  """The task, the pool's specs, every split, and the evaluated problems."""
  task = environment.load_task(config)
  specs = environment.validate_config(config, num_roles=len(task.roles))
  splits = environment.load_splits(config, task)
  if split not in splits:
    raise EvaluationError(f"--split={split!r}; choose one of {sorted(splits)}")
  if limit < 0:
    raise EvaluationError(f"--limit={limit}; give a positive number of problems, or 0 for all")
  problems = list(splits[split])
  return task, specs, splits, problems[:limit] if limit else problems


def _open_system(config: ml_collections.ConfigDict, workdir: pathlib.Path, task: Any, backend: Any, encoder: Any,
                 log: Callable[[str], None]):
  """The trained HieraMAS in ``workdir`` with the --config's inference rules."""
  from hieramas_jax.system import HieraMAS  # pylint: disable=g-import-not-at-top  (imports JAX)

  system = HieraMAS.from_workdir(workdir, backend=backend, encoder=encoder)
  if system.task.name != task.name:
    raise EvaluationError(f"--config is for task {task.name!r} but the run in {workdir} was trained on "
                          f"{system.task.name!r}; pass that run's config")
  _warn_if_split_differs(config, getattr(system, "config", None))
  _use_inference_rules(config, system, log)
  return system


def _embed_queries(system, problems) -> None:
  """The embeddings planning needs, computed once (they land in the encoder's on-disk cache)."""
  system.query_embeddings(problems)
  system.query_role_embeddings(problems)


def _write(out: pathlib.Path, rows: list[report.MethodRow], views: list[report.TopologyView], extra: dict[str, Any],
           title: str) -> dict[str, Any]:
  """Marks the Pareto front, writes the report files; returns results.json's content plus paths and table."""
  report.mark_front(rows)
  extra["hieramas_on_front"] = next((r.on_front for r in rows if r.method == "hieramas"), None)
  # The same question over the named methods only (without the per-model single rows).
  named = [r for r in rows if not r.method.startswith("single[")]
  extra["pareto_front_named_methods"] = [r.method for r, on in zip(named, report.pareto_front(named)) if on]
  extra["hieramas_on_front_named_methods"] = ("hieramas" in extra["pareto_front_named_methods"]
                                              if any(r.method == "hieramas" for r in rows) else None)
  paths = report.write_report(out, rows, views, extra=extra, title=title)
  results = json.loads(pathlib.Path(paths["results.json"]).read_text())
  results["paths"] = paths
  results["table"] = report.markdown_table(rows)
  return results


def evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, out: str | pathlib.Path | None = None,
             *, methods: str | Sequence[str] | None = None, split: str = "test", limit: int = 0,
             flag_values: Mapping[str, Any] | None = None, topology_queries: int = 4, backend: Any = None,
             encoder: Any = None, log: Callable[[str], None] | None = None,
             registry: baselines.Registry | None = None) -> dict[str, Any]:
  """Runs the methods on a split and writes the report; returns results.json's content plus ``paths``.

  In a multi-host run every process calls it; process 0 alone calls ``log`` and writes ``out``.
  """
  log = log or (lambda s: print(s, file=sys.stderr, flush=True))
  if not distributed.is_primary():
    log = lambda s: None  # every process computes process 0's rows: one of them tells
  registry = registry or baselines.METHODS
  started = time.perf_counter()
  workdir = pathlib.Path(workdir).absolute()
  out = pathlib.Path(out) if out else workdir / "eval"
  chosen = parse_methods(methods, registry)
  flags = resolve_flags(registry, flag_values, config)
  task, specs, splits, problems = _load_problems(config, split, limit)
  built = []  # the backend built here (not the caller's), closed at the end

  def open_system():
    run_backend = backend
    if run_backend is None:
      # The run's backend: the simulator (every split's problems registered) or the endpoints, behind the
      # response cache in the workdir, so problems seen in training are not paid for twice.
      run_backend = environment.make_backend(config, specs, task, [p for s in splits.values() for p in s], workdir)
      built.append(run_backend)
    return _open_system(config, workdir, task, run_backend, encoder, log)

  try:
    # Each process builds its backend and checks its endpoints: a failure on one host stops every process alike.
    system = distributed.alike(open_system, "trained system opened")
    problems = list(system.problems(problems))
    if distributed.is_multi_process():
      # Process 0 embeds first: a paid encoder's cache in the workdir then serves the others (no text paid twice).
      distributed.on_primary(lambda: _embed_queries(system, problems), "evaluated queries embedded by process 0")
    planned = plan_rows(registry, chosen, flags, config, list(system.model_names), bool(system.has_classifier))
    if not system.has_classifier:
      # The system then draws a seeded random candidate per query; say so where the classifier would act.
      log(f"no graph classifier in {workdir}: "
          f"{' and '.join(m.name for m in registry if m.uses_classifier)} use random DAGs")
    # Every method samples with the generation parameters HieraMAS itself runs with (the trained config's).
    params = system.generation_params()
    ctx = baselines.MethodContext(problems=problems, backend=system.backend, task=system.task, params=params,
                                  trained=baselines.TrainedSystem(system, problems))
    rows, verdicts = run_rows(planned, ctx, float(config.llm.max_failed_fraction), split, log)
    extra = {
        "workdir": str(workdir), "split": split, "queries": len(problems), "methods": [r.method for r in rows],
        "has_classifier": bool(system.has_classifier),
        "settings": {**flags, "topology_queries": topology_queries},
        "generation_params": params, "backend": config.llm.backend, "task": task.name,
        "wall_s": time.perf_counter() - started,  # loading and every method, before the report is drawn
        "per_query": {"uids": [p.uid for p in problems], "solved": verdicts},
    }
    title = f"{task.name} ({split}, {len(problems)} queries): accuracy against cost"

    def write_report() -> dict[str, Any]:
      views = _topology_views(system, problems[:max(0, topology_queries)], verdicts.get("hieramas"))
      return _write(out, rows, views, extra, title)

    # One writer; a failure to write is raised on every process alike.
    return distributed.on_primary(write_report, "evaluation report")
  finally:
    for run_backend in built:
      executor.close_backend(run_backend)


def command_line(program: str, config: ml_collections.ConfigDict, workdir: str, out: str | None, **kwargs) -> None:
  """``evaluate`` for a launcher: prints the table, the front and the files; a failure a user fixes is one line.

  Expected failures (``EXPECTED_FAILURES``) exit with status 1 and one line on
  stderr, ``<program>: <ErrorType>: <cause and fix>``, without a traceback. In a
  multi-host run (joined before this call) every process evaluates, a failure
  raised alike on every process ends each of them with that line, and process 0
  alone prints.
  """
  started = time.perf_counter()
  try:
    results = evaluate(config, workdir, out, **kwargs)
  except (*EXPECTED_FAILURES, distributed.PeerLostError) as e:
    lines = [" ".join(line.split()) for line in str(e).splitlines()]
    # Status 1 with one line (one clause per failing model), no traceback.
    line = f"{program}: {type(e).__name__}: {'; '.join(line for line in lines if line)}"
    if distributed.is_multi_process():
      distributed.fail_fast(line)  # no shutdown handshake: the other processes end on their own line
    sys.stdout.flush()
    sys.exit(line)
  primary = distributed.is_primary()
  distributed.finish()
  if not primary:
    return
  print(results["table"])
  front, named = results.get("hieramas_on_front"), results.get("hieramas_on_front_named_methods")
  if front is not None:
    print(f"HieraMAS on the accuracy-cost Pareto front: {'yes' if front else 'no'} (all rows); "
          f"{'yes' if named else 'no'} (named methods only, without the single[model] rows)")
  print(f"Wall time: {time.perf_counter() - started:.1f}s (methods {results['wall_s']:.1f}s, then the report)")
  for name, path in results["paths"].items():
    print(f"{name:15s} {path}")
