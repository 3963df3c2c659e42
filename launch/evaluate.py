"""Evaluates a trained HieraMAS run against baselines on a held-out split.

  python -m launch.evaluate --config=configs/math.py --workdir=runs/math
  python -m launch.evaluate --config=configs/math.py --workdir=runs/math --methods=hieramas,single,cot --limit=32

Every method runs on the same problems (the split that training held out: the
config's task, sizes and seed), the same LLM backend (the run's response cache
in the workdir) and the same task grader. Writes to --out (default
<workdir>/eval): table.md, table.csv, results.json, pareto.png (accuracy against
cost, Pareto front, HieraMAS highlighted) and topologies.png (the models and DAG
HieraMAS chose for the first few queries), and prints the Markdown table.

A query with any failed LLM call is an error record: counted in the table's
``failed`` column, never graded. Every endpoint of the pool is called once
before any work (``llm.preflight``), and a method whose failed queries exceed
``llm.max_failed_fraction`` (or are all of them) stops the evaluation. Any such
failure prints one line on stderr naming the cause and the fix, and exits with
status 1.

Methods (--methods, comma-separated; default all):
  single, cot                 one call of --fixed_model (plain / step by step)
  self_consistency            --sc_samples samples of --baseline_model, majority
  debate                      --debate_agents x --debate_rounds of --baseline_model, majority
  mixture                     --mixture_proposers proposers + one synthesizer (--baseline_model)
  mlpo                        MLPO-style untrained leader + --mlpo_peers peers x --mlpo_rounds
  neuromas                    NeuroMAS-style --neuromas_depth x --neuromas_width layers + aggregator
  full_graph                  the paper's Full-Graph: llm.decision_model as one call per role (no proposers)
                              and as decision node, on the full DAG (all forward edges of the role order)
  random_graph                the paper's Random-Graph: as full_graph on ONE seeded random DAG for the whole
                              split (as the paper's code draws it), density in graphs.candidate_density_range
  selector_full_graph         the selector's models on the full DAG of the roles
  selector_random_graph       the selector's models on a random DAG per query (graphs.candidate_density_range)
  hieramas                    the selector's models on the classifier's best of K DAGs
  hieramas_no_selection       --fixed_model at every position, the classifier's DAG
  hieramas_no_classifier      the selector's models on one random DAG (the same for every query)
  single_each                 one row per pool model: a single plain call of that model

"The selector's models" are its argmax under the --config's inference section
(inference.max_skipped_roles: the most roles dropped per query, never every
answer-giving role when capped; inference.rotate_top_n: proposers rotating over
the top models of one seeded proposer row), the rules HieraMAS.plan applies.
The --config's graphs.candidate_density_range gives the candidate DAGs the
classifier scores and the random-DAG baselines' densities.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags
import numpy as np

from hieramas_jax import baselines, executor, graphs, report
from hieramas_jax import config as config_lib
from hieramas_jax.llm import base as llm_base
from hieramas_jax.train import environment

ALL_METHODS = ("single", "cot", "self_consistency", "debate", "mixture", "mlpo", "neuromas", "full_graph",
               "random_graph", "selector_full_graph", "selector_random_graph", "hieramas", "hieramas_no_selection",
               "hieramas_no_classifier", "single_each")
# Streams of the seeded random DAGs (apart from each other and from training's).
_SELECTOR_RANDOM_DAGS_STREAM, _ONE_POOL_DAG_STREAM, _PAPER_RANDOM_DAG_STREAM = 101, 202, 303

config_flags.DEFINE_config_file("config", None, "Configuration file of the run (configs/*.py[:args]); its task, "
                                "sizes and seed define the split, its llm section the backend, its inference "
                                "section the selector's inference rules.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run: checkpoints and caches.")
_OUT = flags.DEFINE_string("out", "", "Where the report goes (default <workdir>/eval).")
_METHODS = flags.DEFINE_string("methods", "all", f"Comma list of methods or 'all': {', '.join(ALL_METHODS)}.")
_SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate on: train, val or test.")
_LIMIT = flags.DEFINE_integer("limit", 0, "Evaluate the first N problems of the split only (0: all).")
_FIXED_MODEL = flags.DEFINE_string("fixed_model", "", "Model of single, cot and hieramas_no_selection "
                                   "(default: the config's llm.decision_model).")
_BASELINE_MODEL = flags.DEFINE_string("baseline_model", "", "Model of self_consistency, debate, mixture, mlpo and "
                                      "neuromas (default: the config's llm.decision_model).")
_SC_SAMPLES = flags.DEFINE_integer("sc_samples", 5, "Self-consistency: samples per query.")
_DEBATE_AGENTS = flags.DEFINE_integer("debate_agents", 3, "Debate: agents.")
_DEBATE_ROUNDS = flags.DEFINE_integer("debate_rounds", 2, "Debate: rounds (the first is independent answers).")
_MIXTURE_PROPOSERS = flags.DEFINE_integer("mixture_proposers", 3, "Mixture: proposers before the synthesizer.")
_MLPO_PEERS = flags.DEFINE_integer("mlpo_peers", 3, "MLPO-style: peers besides the leader.")
_MLPO_ROUNDS = flags.DEFINE_integer("mlpo_rounds", 2, "MLPO-style: rounds of peers answering and the leader "
                                    "synthesizing.")
_NEUROMAS_DEPTH = flags.DEFINE_integer("neuromas_depth", 2, "NeuroMAS-style: layers.")
_NEUROMAS_WIDTH = flags.DEFINE_integer("neuromas_width", 3, "NeuroMAS-style: nodes per layer.")
_TOPOLOGY_QUERIES = flags.DEFINE_integer("topology_queries", 4, "Queries drawn in topologies.png.")
flags.mark_flags_as_required(["config", "workdir"])


@dataclasses.dataclass(frozen=True)
class Settings:
  """Sizes and models of the baselines (flags of this launcher)."""

  fixed_model: str = ""  # empty: the config's llm.decision_model
  baseline_model: str = ""  # empty: the config's llm.decision_model
  sc_samples: int = 5
  debate_agents: int = 3
  debate_rounds: int = 2
  mixture_proposers: int = 3
  mlpo_peers: int = 3
  mlpo_rounds: int = 2
  neuromas_depth: int = 2
  neuromas_width: int = 3
  topology_queries: int = 4


class EvaluationError(ValueError):
  """An evaluation request that cannot run (unknown method, model, split...)."""


# Failures a user fixes (endpoints, keys, config, the request, a missing run, failed calls): one line, no traceback.
EXPECTED_FAILURES = (EvaluationError, environment.ConfigError, llm_base.ConfigError, executor.FailedCallsError,
                     FileNotFoundError)


def parse_methods(text: str | Sequence[str] | None) -> list[str]:
  """Method names from a comma list ('all' or empty: every method), in the canonical order."""
  if text is None:
    return list(ALL_METHODS)
  items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
  if not items or items == ["all"]:
    return list(ALL_METHODS)
  unknown = sorted(set(items) - set(ALL_METHODS))
  if unknown:
    raise EvaluationError(f"unknown method(s) {unknown}; choose from: {', '.join(ALL_METHODS)} (or 'all')")
  return [m for m in ALL_METHODS if m in items]


def _check_model(name: str, pool: Sequence[str], what: str) -> str:
  if name not in pool:
    raise EvaluationError(f"{what}={name!r} is not in the model pool {list(pool)}; pick one of those")
  return name


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


def evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, out: str | pathlib.Path | None = None,
             *, methods: str | Sequence[str] | None = None, split: str = "test", limit: int = 0,
             settings: Settings = Settings(), backend: Any = None, encoder: Any = None,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Runs the methods on a split and writes the report; returns results.json's content plus ``paths``."""
  from hieramas_jax.system import HieraMAS  # pylint: disable=g-import-not-at-top  (imports JAX)

  log = log or (lambda s: print(s, file=sys.stderr, flush=True))
  started = time.perf_counter()
  workdir = pathlib.Path(workdir).absolute()
  out = pathlib.Path(out) if out else workdir / "eval"
  chosen = parse_methods(methods)

  task = environment.load_task(config)
  specs = environment.validate_config(config, num_roles=len(task.roles))
  splits = environment.load_splits(config, task)
  if split not in splits:
    raise EvaluationError(f"--split={split!r}; choose one of {sorted(splits)}")
  problems = list(splits[split])
  if limit:
    if limit < 0:
      raise EvaluationError(f"--limit={limit}; give a positive number of problems, or 0 for all")
    problems = problems[:limit]
  own_backend = backend is None
  if own_backend:
    # The run's backend: the simulator (every split's problems registered) or the endpoints, behind the
    # response cache in the workdir, so problems seen in training are not paid for twice.
    backend = environment.make_backend(config, specs, task, [p for s in splits.values() for p in s], workdir)
  try:
    system = HieraMAS.from_workdir(workdir, backend=backend, encoder=encoder)
    if system.task.name != task.name:
      raise EvaluationError(f"--config is for task {task.name!r} but the run in {workdir} was trained on "
                            f"{system.task.name!r}; pass that run's config")
    _warn_if_split_differs(config, getattr(system, "config", None))
    _use_inference_rules(config, system, log)
    problems = list(system.problems(problems))
    pool_models = list(system.model_names)
    default_model = config.llm.decision_model
    fixed = _check_model(settings.fixed_model or default_model, pool_models, "fixed_model")
    base = _check_model(settings.baseline_model or default_model, pool_models, "baseline_model")
    # Every method samples with the generation parameters HieraMAS itself runs with (the trained config's).
    params = system.environment.generation_params()
    bk, tk = system.backend, system.task
    seed = int(config.seed)
    num_roles = len(system.roles)
    s = settings

    rows: list[report.MethodRow] = []
    verdicts_by_method: dict[str, list[bool | None]] = {}
    cache: dict[str, Any] = {}

    def selector_assignments():
      if "assign" not in cache:
        cache["assign"] = system.assignments(problems)
      return cache["assign"]

    def candidate_pool():
      if "pool" not in cache:
        cache["pool"] = np.asarray(system.candidate_pool())
      return cache["pool"]

    def classifier_graphs():
      if "graphs" not in cache:
        adjs, scores = system.choose_graphs(problems, candidate_pool())
        cache["graphs"] = (np.asarray(adjs), np.asarray(scores))
      return cache["graphs"]

    def execute(plans) -> list[baselines.QueryOutcome]:
      return baselines.outcomes_from_results(plans, executor.execute(plans, bk, tk, params=params))

    def run_plans(assignments, adjacencies) -> list[baselines.QueryOutcome]:
      return execute([executor.Plan(problem=p, roles=system.roles, assignment=a, adjacency=np.asarray(adj),
                                    decision_model=system.decision_model, sample=0)
                      for p, a, adj in zip(problems, assignments, adjacencies)])

    def run_single_call_roles(adjacency) -> list[baselines.QueryOutcome]:
      return execute(baselines.single_call_role_plans(problems, system.roles, default_model, adjacency,
                                                      num_proposers=int(system.config.selector.num_proposers)))

    def run_hieramas() -> list[baselines.QueryOutcome]:
      runs = system.run(problems)
      # RunResult.plan is the PlannedQuery; its .plan the executor Plan that ran.
      plans = [getattr(r.plan, "plan", r.plan) for r in runs]
      return baselines.outcomes_from_results(plans, [r.result for r in runs])

    density = tuple(system.config.graphs.candidate_density_range)

    def random_dags() -> np.ndarray:
      rng = np.random.default_rng([seed, _SELECTOR_RANDOM_DAGS_STREAM])
      return np.stack([graphs.random_dag(rng, num_roles, density) for _ in problems])

    def one_random_dag() -> np.ndarray:
      pool = candidate_pool()
      adj = pool[int(np.random.default_rng([seed, _ONE_POOL_DAG_STREAM]).integers(len(pool)))]
      return np.stack([adj] * len(problems))

    single_calls = f"{default_model} in every role (1 call, no proposers) and as decision node"

    runners: dict[str, tuple[str, Callable[[], list[baselines.QueryOutcome]]]] = {
        "single": (fixed, lambda: baselines.run_single(problems, bk, tk, fixed, params=params)),
        "cot": (f"{fixed}, step by step",
                lambda: baselines.run_single(problems, bk, tk, fixed, chain_of_thought=True, params=params)),
        "self_consistency": (f"{base}, {s.sc_samples} samples, majority",
                             lambda: baselines.run_self_consistency(problems, bk, tk, base, samples=s.sc_samples,
                                                                    params=params)),
        "debate": (f"{base}, {s.debate_agents} agents x {s.debate_rounds} rounds, majority",
                   lambda: baselines.run_debate(problems, bk, tk, base, agents=s.debate_agents,
                                                rounds=s.debate_rounds, params=params)),
        "mixture": (f"{base}, {s.mixture_proposers} proposers + synthesizer",
                    lambda: baselines.run_mixture(problems, bk, tk, base, proposers=s.mixture_proposers,
                                                  params=params)),
        "mlpo": (f"{base}, leader + {s.mlpo_peers} peers x {s.mlpo_rounds} rounds",
                 lambda: baselines.run_mlpo(problems, bk, tk, base, peers=s.mlpo_peers, rounds=s.mlpo_rounds,
                                            params=params)),
        "neuromas": (f"{base}, {s.neuromas_depth} x {s.neuromas_width} layers + aggregator",
                     lambda: baselines.run_neuromas(problems, bk, tk, base, depth=s.neuromas_depth,
                                                    width=s.neuromas_width, params=params)),
        "full_graph": (f"{single_calls}, full DAG", lambda: run_single_call_roles(graphs.full(num_roles))),
        "random_graph": (f"{single_calls}, one random DAG for all queries (density {density[0]:g}-{density[1]:g})",
                         lambda: run_single_call_roles(paper_random_dag(seed, num_roles, density))),
        "selector_full_graph": ("selector's models, full DAG",
                                lambda: run_plans(selector_assignments(), [graphs.full(num_roles)] * len(problems))),
        "selector_random_graph": (f"selector's models, a random DAG per query (density {density[0]:g}-{density[1]:g})",
                                  lambda: run_plans(selector_assignments(), random_dags())),
        "hieramas": (f"selector's models, classifier's best of {int(config.graphs.num_candidates)} DAGs",
                     run_hieramas),
        "hieramas_no_selection": (f"{fixed} at every position, classifier's DAG",
                                  lambda: run_plans(system.assignments(problems, fixed_model=fixed),
                                                    classifier_graphs()[0])),
        "hieramas_no_classifier": ("selector's models, one random DAG for all queries",
                                   lambda: run_plans(selector_assignments(), one_random_dag())),
    }

    max_failed = float(config.llm.max_failed_fraction)

    def record(method: str, setup: str, fn: Callable[[], list[baselines.QueryOutcome]]) -> None:
      t = time.perf_counter()
      outcomes = fn()
      wall = time.perf_counter() - t
      # Accuracies over different few surviving queries would not compare: stop instead of reporting them.
      executor.check_failures(outcomes, max_failed, f"evaluation of {method} ({split} split)")
      verdicts = report.grade_outcomes(tk, problems, outcomes)
      verdicts_by_method[method] = verdicts
      row = report.summarize(method, problems, outcomes, tk, setup=setup, wall_s=wall, verdicts=verdicts)
      rows.append(row)
      log(f"{method:28s} accuracy {row.accuracy:.3f}  cost ${row.cost_usd:.6f}  calls {row.calls:.2f}  "
          f"latency {row.latency_s:.2f}s  failed {row.failed}  truncated {row.truncated}  ({wall:.1f}s)")

    if not system.has_classifier:
      # The system then draws a seeded random candidate per query; say so where the classifier would act.
      log(f"no graph classifier in {workdir}: hieramas and hieramas_no_selection use random DAGs")
      for method in ("hieramas", "hieramas_no_selection"):
        setup, fn = runners[method]
        runners[method] = (f"{setup} [no classifier: seeded random DAG]", fn)
    for method in chosen:
      if method == "single_each":
        for name in pool_models:
          if name == fixed and "single" in chosen:
            continue  # the same calls as 'single' (same prompt, model and sample): no duplicate row
          record(f"single[{name}]", name,
                 lambda name=name: baselines.run_single(problems, bk, tk, name, params=params))
        continue
      setup, fn = runners[method]
      record(method, setup, fn)

    views = _topology_views(system, problems[:max(0, settings.topology_queries)],
                            verdicts_by_method.get("hieramas"))
    extra = {
        "workdir": str(workdir), "split": split, "queries": len(problems), "methods": [r.method for r in rows],
        "has_classifier": bool(system.has_classifier),
        "settings": dataclasses.asdict(settings) | {"fixed_model": fixed, "baseline_model": base},
        "generation_params": params, "backend": config.llm.backend, "task": task.name,
        "wall_s": time.perf_counter() - started,  # loading and every method, before the report is drawn
        "per_query": {"uids": [p.uid for p in problems], "solved": verdicts_by_method},
    }
    report.mark_front(rows)
    extra["hieramas_on_front"] = next((r.on_front for r in rows if r.method == "hieramas"), None)
    # The same question over the named methods only (without the per-model single rows).
    named = [r for r in rows if not r.method.startswith("single[")]
    extra["pareto_front_named_methods"] = [r.method for r, on in zip(named, report.pareto_front(named)) if on]
    extra["hieramas_on_front_named_methods"] = ("hieramas" in extra["pareto_front_named_methods"]
                                                if any(r.method == "hieramas" for r in rows) else None)
    paths = report.write_report(out, rows, views, extra=extra,
                                title=f"{task.name} ({split}, {len(problems)} queries): accuracy against cost")
    results = json.loads(pathlib.Path(paths["results.json"]).read_text())
    results["paths"] = paths
    results["table"] = report.markdown_table(rows)
    return results
  finally:
    if own_backend:
      executor.close_backend(backend)


def paper_random_dag(seed: int, num_roles: int, density: tuple[float, float]) -> np.ndarray:
  """The Random-Graph baseline's DAG: one seeded random DAG for the whole split, as the paper's code draws it."""
  return graphs.random_dag(np.random.default_rng([int(seed), _PAPER_RANDOM_DAG_STREAM]), num_roles, density)


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
  planned = system.plan(problems)
  views = []
  for i, q in enumerate(planned):
    plan = q.plan
    score = getattr(q, "score", None)
    score = None if score is None or not np.isfinite(score) else float(score)  # NaN: a random DAG
    views.append(report.TopologyView(
        question=q.problem.question, roles=[r.name for r in plan.roles],
        assignment=[list(row) for row in plan.assignment], adjacency=np.asarray(plan.adjacency).astype(int),
        decision_model=plan.decision_model, score=score,
        solved=None if verdicts is None else verdicts[i]))
  return views


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  settings = Settings(
      fixed_model=_FIXED_MODEL.value, baseline_model=_BASELINE_MODEL.value, sc_samples=_SC_SAMPLES.value,
      debate_agents=_DEBATE_AGENTS.value, debate_rounds=_DEBATE_ROUNDS.value,
      mixture_proposers=_MIXTURE_PROPOSERS.value, mlpo_peers=_MLPO_PEERS.value, mlpo_rounds=_MLPO_ROUNDS.value,
      neuromas_depth=_NEUROMAS_DEPTH.value, neuromas_width=_NEUROMAS_WIDTH.value,
      topology_queries=_TOPOLOGY_QUERIES.value)
  started = time.perf_counter()
  try:
    results = evaluate(flags.FLAGS.config, _WORKDIR.value, _OUT.value or None, methods=_METHODS.value,
                       split=_SPLIT.value, limit=_LIMIT.value, settings=settings)
  except EXPECTED_FAILURES as e:
    sys.stdout.flush()
    lines = [" ".join(line.split()) for line in str(e).splitlines()]
    # Status 1 with one line (one clause per failing model), no traceback.
    sys.exit(f"launch.evaluate: {type(e).__name__}: {'; '.join(line for line in lines if line)}")
  print(results["table"])
  front, named = results.get("hieramas_on_front"), results.get("hieramas_on_front_named_methods")
  if front is not None:
    print(f"HieraMAS on the accuracy-cost Pareto front: {'yes' if front else 'no'} (all rows); "
          f"{'yes' if named else 'no'} (named methods only, without the single[model] rows)")
  print(f"Wall time: {time.perf_counter() - started:.1f}s (methods {results['wall_s']:.1f}s, then the report)")
  for name, path in results["paths"].items():
    print(f"{name:15s} {path}")


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)  # a bad --config: one line, exit 1
