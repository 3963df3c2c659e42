"""What training learns on the simulated pool, judged by the simulator's exact oracle.

Prints one JSON line. For each simulator seed it trains both stages with the
default MATH config (synthetic problems, simulated pool) and, on held-out test
queries, computes with the simulator's exact oracle (expected values, no sampling
noise) in two action spaces:

- ``free``: any assignment (a model or skip at every position), the selector's
  plain argmax, as training samples it;
- ``inference``: the plans HieraMAS runs (``config.inference``: the skip cap and
  proposer rotation), the selector's argmax with those rules applied.

In each: ``best``, the oracle search's best plan (assignment and DAG of the
candidate pool, under the space's rules; ``llm/sim/search.py``, a local search
whose misses show as ``queries_trained_above_best``); ``random``, random plans on
random DAGs; ``trained`` and ``initial``, the trained and the untrained selector
(the initialisation training started from) on the classifier's chosen DAG;
``gap_closed`` = (trained - random) / (best - random) on mean rewards, and
``gap_closed_initial`` the same for the untrained selector (what training adds
is the difference). Also:

- the stage-2 classifier's mean per-query ROC-AUC on held-out queries: on the
  validation split that picked its epoch (``val_auc``), on the test split against
  labels made exactly as training makes them (``test_auc_sampled_labels``: G DAGs
  run ``samples_per_graph`` times each, top-k solved by mean reward) and against
  the oracle's noise-free best ``ORACLE_TOP_K`` candidates by expected reward
  (``test_auc_vs_oracle_labels``); what ranking by the exact expected reward
  scores against the same sampled test labels (``truth_auc_sampled_labels``: the
  labels' own noise, not a ceiling); null where no classifier was trained
  (``stage2_skipped`` says why);
- stage-1 episodes (queries executed and graded) per second.

Then a credit-assignment scenario: one role's model choice matters for its own
output while a strong decision model that ignores the roles masks it in the
final answer. It trains with alpha = 0.5 (multi-level reward) and alpha = 0
(system reward only), prints both learning curves (fraction of that role's
synthesizer picks that are the right model) and writes a PNG.

    python bench/train_sim.py [--seeds 0,1,2,3,4] [--steps N] [--samples_per_graph S] [--out bench_out/train_sim]
                              [--set stage1.run_skip_credit=role --set selector.skip_head=shared ...]
    python bench/train_sim.py --seeds ''     # the credit-assignment scenario alone (about a minute)

About 10 minutes per seed on 2 CPU cores (stage 1's 1800 steps and stage 2's runs dominate).
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import time
from typing import Any

import numpy as np

from hieramas_jax import config as base_config
from hieramas_jax import encoders, jsonio
from hieramas_jax.llm import cache as llm_cache
from hieramas_jax.llm import sim
from hieramas_jax.llm.sim import search as oracle_search
from hieramas_jax.models import selector as sel
from hieramas_jax.train import environment, evaluation, metrics, rollout, stage1, stage2
from hieramas_jax.train.metric_writer import MetricWriter


# The oracle's positive DAGs: its best ORACLE_TOP_K candidates by expected reward (a fixed number, so the
# figure does not move with the training labels' top_k).
ORACLE_TOP_K = 4


def _assignment(env, actions_row):
  return sel.actions_to_assignment(actions_row[None], env.model_names)[0]


def expected_reward(env, oracle, problem, actions_row, adj) -> float:
  """The oracle's exact expected system reward of one assignment on one DAG."""
  return oracle.evaluate(problem.subject, problem.level, _assignment(env, actions_row), adj, env.decision_model,
                         question=problem.question).expected_reward


def inference_rules(env) -> oracle_search.PlanRules:
  """The plans HieraMAS may run at inference (config.inference), as the oracle's search rules."""
  rules = env.config.inference
  return oracle_search.PlanRules(max_skipped_roles=int(rules.max_skipped_roles),
                                 answer_roles=tuple(bool(a) for a in env.gives_answer),
                                 proposers_may_skip=int(rules.rotate_top_n) <= 0)


def random_inference_actions(env, problems, count: int, seed: int) -> np.ndarray:
  """[len(problems), count, R, P+1] random plans under the inference rules (the rules applied to random logits)."""
  mask = np.asarray(rollout.selection_mask(env, 1).valid)[0]
  logits = np.random.default_rng(seed).normal(size=(len(problems) * count, *mask.shape))
  repeated = [p for p in problems for _ in range(count)]
  return rollout.inference_actions(env, logits, repeated).reshape(len(problems), count, *mask.shape[:-1])


def space_figures(env, oracle, pool, *, trained, initial, chosen, rand_actions, rand_dags,
                  rules: oracle_search.PlanRules) -> dict[str, float]:
  """Oracle figures of one action space: the trained and the initial selector on the chosen DAGs, random plans on
  random DAGs, and the search's best plan of the pool per query type (under ``rules``)."""
  problems = env.splits["test"]
  best_by_type: dict[tuple[str, int], tuple[list, np.ndarray]] = {}
  rows: dict[str, list[float]] = {"trained": [], "initial": [], "random": [], "best": []}
  for i, p in enumerate(problems):
    key = (p.subject, p.level)
    if key not in best_by_type:  # searched once per query type, sized by its first query
      found = oracle_search.best_plan(oracle, p.subject, p.level, list(pool), env.decision_model,
                                      proposers=env.config.selector.num_proposers, models=env.model_names,
                                      restarts=6, rules=rules, question=p.question)
      best_by_type[key] = (found.assignment, pool[found.dag_index])
    ev = lambda actions, adj: expected_reward(env, oracle, p, actions, adj)  # noqa: E731
    best_assignment, best_adj = best_by_type[key]
    rows["best"].append(oracle.evaluate(p.subject, p.level, best_assignment, best_adj, env.decision_model,
                                        question=p.question).expected_reward)
    rows["trained"].append(ev(trained[i], pool[chosen[i]]))
    rows["initial"].append(ev(initial[i], pool[chosen[i]]))
    rows["random"].append(float(np.mean([ev(a, pool[d]) for a, d in zip(rand_actions[i], rand_dags[i])])))
  means = {k: float(np.mean(v)) for k, v in rows.items()}
  # The search is local: a trained plan above its "best" would show it missing the optimum.
  means["queries_trained_above_best"] = int(np.sum(np.array(rows["trained"]) > np.array(rows["best"]) + 1e-9))
  means["calls_trained"] = float(np.mean([(a != len(env.model_names)).sum() + 1 for a in trained]))
  gap = means["best"] - means["random"]
  means["gap"] = gap
  means["gap_closed"] = (means["trained"] - means["random"]) / gap if gap > 0 else float("nan")
  means["gap_closed_initial"] = (means["initial"] - means["random"]) / gap if gap > 0 else float("nan")
  return means


def oracle_figures(env, oracle, s1, s2, pool, *, n_random: int = 32,
                   seed: int = 0) -> tuple[dict[str, Any], np.ndarray]:
  """Oracle figures of both action spaces, the classifier's ranking against the oracle's, and the expected reward
  [test queries, K] of the trained assignment HieraMAS runs (inference rules applied) on every pool DAG."""
  problems = env.splits["test"]
  n = len(problems)
  index = np.arange(n)
  init_graphdef, init_params = stage1.build_selector(env)  # the initialisation training started from
  rng = np.random.default_rng(seed)
  if s2.params is None:  # no classifier was trained: inference draws a seeded random candidate per query
    chosen, scores = np.random.default_rng([seed, 7]).integers(0, len(pool), n), np.full((n, len(pool)), np.nan)
  else:
    chosen, scores = evaluation.choose_graphs(env, s2.graphdef, s2.params, "test", pool)
  rand_dags = rng.integers(0, len(pool), (n, n_random))
  learned = rollout.greedy_actions(env, s1.graphdef, s1.params, "test", index)
  # What HieraMAS runs (and stage 2 labels DAGs for): the argmax under the inference rules.
  run = rollout.inference_greedy_actions(env, s1.graphdef, s1.params, "test", index)
  rand_free = evaluation.random_actions(env, n * n_random, seed + 1).reshape(n, n_random, *learned.shape[1:])
  figures: dict[str, Any] = {
      "free": space_figures(env, oracle, pool, trained=learned, chosen=chosen, rand_actions=rand_free,
                            rand_dags=rand_dags, rules=oracle_search.PlanRules(),
                            initial=rollout.greedy_actions(env, init_graphdef, init_params, "test", index)),
      "inference": space_figures(
          env, oracle, pool, trained=run,
          initial=rollout.inference_greedy_actions(env, init_graphdef, init_params, "test", index), chosen=chosen,
          rand_actions=random_inference_actions(env, problems, n_random, seed + 2), rand_dags=rand_dags,
          rules=inference_rules(env)),
  }
  # The classifier's ranking of the whole pool against the oracle's (noise-free) top-k by expected reward.
  pool_expected = np.array([[expected_reward(env, oracle, p, run[i], g) for g in pool]
                            for i, p in enumerate(problems)])
  oracle_aucs = []
  for i in range(n):
    kth = np.sort(pool_expected[i])[::-1][min(ORACLE_TOP_K, len(pool)) - 1]
    oracle_aucs.append(metrics.roc_auc(scores[i], pool_expected[i] >= kth - 1e-12) if s2.params is not None
                       else np.nan)
  figures["test_auc_vs_oracle_labels"] = float(np.nanmean(oracle_aucs)) if np.isfinite(oracle_aucs).any() else np.nan
  figures["trained_assignment_random_dag"] = float(np.mean(
      [expected_reward(env, oracle, p, run[i], pool[rand_dags[i, 0]]) for i, p in enumerate(problems)]))
  return figures, pool_expected


def sampled_label_figures(env, s1, s2, pool, pool_expected: np.ndarray) -> dict[str, float]:
  """The classifier and the exact truth (``pool_expected`` of ``oracle_figures``) against test labels made
  exactly as training makes them."""
  test = stage2.collect(env, s1.graphdef, s1.params, "test", pool)
  scores = stage2.val_auc(env, s2.graphdef, s2.params, test, split="test")[0] if s2.params is not None else np.nan
  index = {g.astype(np.int8).tobytes(): k for k, g in enumerate(pool)}
  picks = np.array([[index[g.tobytes()] for g in row] for row in test.adjs])  # the pool DAG of each (query, graph)
  expected = np.take_along_axis(pool_expected, picks, axis=1)
  truth, _ = metrics.mean_per_query_auc(expected, test.labels, test.valid)
  return {"test_auc_sampled_labels": scores, "truth_auc_sampled_labels": truth}


def math_config():
  """configs/math.py's default (offline) config, as `python -m launch.train --config=configs/math.py` uses it,
  with the first 128 of its test queries."""
  c = base_config.load_config_file(pathlib.Path(__file__).resolve().parent.parent / "configs" / "math.py", "")
  # The oracle's figures are exact expectations per query; 128 test queries (5 per query type) keep the oracle
  # pass and the collection of test labels short.
  c.task.num_test = 128
  return c


def run_seed(seed: int, steps: int | None, out: pathlib.Path, encoder, samples_per_graph: int,
             overrides: list[str] = ()) -> dict[str, float]:
  c = math_config()
  try:  # the config arg's field=value mechanism: the same parsers as --config.field=value
    base_config.override(c, list(overrides))
  except base_config.ConfigError as e:
    raise SystemExit(f"--set {e}") from None
  c.llm.sim_seed = seed
  if steps:
    c.stage1.steps = steps
  if samples_per_graph:
    c.stage2.samples_per_graph = samples_per_graph
  workdir = out / f"seed{seed}"
  shutil.rmtree(workdir, ignore_errors=True)
  env = environment.build_environment(c, workdir, encoder=encoder)
  writer = MetricWriter(workdir, tensorboard=False)
  start = time.perf_counter()
  s1 = stage1.train_selector(env, workdir, writer, progress=False)
  s1_time = time.perf_counter() - start
  s2 = stage2.train_classifier(env, workdir, writer, s1.policy, progress=False)
  writer.close()
  pool = stage2.candidate_pool(env)
  backend = env.backend.backend if isinstance(env.backend, llm_cache.CachedBackend) else env.backend
  oracle = sim.Oracle(backend.world, env.task, env.roles, c_s=c.reward.cost_solved, c_f=c.reward.cost_failed)
  figures, pool_expected = oracle_figures(env, oracle, s1, s2, pool, seed=seed)
  figures.update(sampled_label_figures(env, s1, s2, pool, pool_expected))
  env.close()
  figures.update(seed=seed, val_auc=s2.best_val_auc, stage2_skipped=s2.skipped,
                 episodes_per_s=c.stage1.steps * c.stage1.batch_size / s1_time, stage1_s=s1_time)
  return _rounded(figures)


def _rounded(value):
  if isinstance(value, dict):
    return {k: _rounded(v) for k, v in value.items()}
  return round(value, 4) if isinstance(value, float) else value


# ---------------------------------------------------------------------------
# Credit assignment scenario
# ---------------------------------------------------------------------------

_ROLE_MODELS, _DECIDER = ("Model-A", "Model-B"), "Oracle-Decider"


def credit_world(right: str, seed: int) -> sim.SimWorld:
  """Two equally priced role models (``right`` solves, the other fails) and a decision model
  that solves nearly everything and reads no candidates, so the final answer masks the roles."""
  models = {name: sim.SimModel(name, 0.1, 0.4, latency_s=0.0, pick=1.0) for name in _ROLE_MODELS}
  models[_DECIDER] = sim.SimModel(_DECIDER, 0.1, 0.4, latency_s=0.0, pick=0.0)
  table = {(name, "*"): ((3.0,) if name == right else (-3.0,)) * 5 for name in _ROLE_MODELS}
  table[(_DECIDER, "*")] = (4.0,) * 5
  return sim.SimWorld(models=models, skill=sim.SkillTable(ability={}, table=table), seed=seed)


def credit_run(alpha: float, steps: int, out: pathlib.Path, encoder, seed: int = 0) -> list[float]:
  c = base_config.base_config("math")
  c.llm.pool = "config"
  c.llm.models = [{"name": n, "price_in_per_m": 0.1, "price_out_per_m": 0.4, "profile": f"model {n}"}
                  for n in (*_ROLE_MODELS, _DECIDER)]
  c.llm.decision_model = _DECIDER
  c.llm.exclude_models = [_DECIDER]  # roles choose between the right and the wrong model
  c.llm.cache = False
  c.selector.synthesizer_may_skip = False
  c.stage1.alpha = alpha
  c.stage1.steps = steps
  c.stage1.batch_size = 16  # the scenario's own size, fixed: larger batches make both alphas settle in a few steps
  c.stage1.eval_every = max(1, steps // 20)  # each "validation" records one point of the curve
  c.stages = "stage1"
  workdir = out / f"credit_alpha{alpha}"
  shutil.rmtree(workdir, ignore_errors=True)
  task = environment.load_task(c)
  splits = environment.load_splits(c, task)
  backend = sim.SimulatedBackend(credit_world(_ROLE_MODELS[0], seed), task, [p for s in splits.values() for p in s])
  env = environment.build_environment(c, workdir, backend=backend, encoder=encoder)
  solver = [r.name for r in env.roles].index("Math Solver")
  # The right model is the one the untrained selector does NOT pick for the Solver's synthesizer, so the
  # curve starts at 0 and only learning can lift it (the same initialisation serves both alphas).
  graphdef, params = stage1.build_selector(env)
  first = rollout.greedy_actions(env, graphdef, params, "val", np.arange(len(env.splits["val"])))[:, solver, -1]
  preferred = env.model_names[int(np.bincount(first, minlength=len(env.model_names)).argmax())]
  right = next(name for name in _ROLE_MODELS if name != preferred)
  backend.world = credit_world(right, seed)

  def right_share(params) -> float:
    """The share of validation queries whose Solver synthesizer the selector's argmax gives the right model."""
    actions = rollout.greedy_actions(env, graphdef, params, "val", np.arange(len(env.splits["val"])))
    return float(np.mean(actions[:, solver, -1] == env.model_names.index(right)))

  curve = [right_share(params)]  # step 0: the initial selector (same seed as training)
  try:
    writer = MetricWriter(workdir, tensorboard=False)
    # Each validation records one point of the curve.
    stage1.train_selector(env, workdir, writer, hooks=[lambda event: curve.append(right_share(event.params))],
                          progress=False)
    writer.close()
  finally:
    env.close()
  return curve


def steps_to_reach(curve: list[float], every: int, level: float = 0.9) -> int | None:
  """First recorded step from which the curve stays at or above ``level`` (curve[0] is step 0)."""
  for i in range(len(curve)):
    if all(v >= level for v in curve[i:]):
      return i * every
  return None


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", default="0,1,2,3,4", help="simulator seeds ('' runs the credit scenario alone)")
  parser.add_argument("--steps", type=int, default=0, help="stage-1 steps (0: the config's)")
  parser.add_argument("--samples_per_graph", type=int, default=0, help="stage-2 runs per (query, DAG) (0: the config's)")
  parser.add_argument("--credit_steps", type=int, default=120)
  parser.add_argument("--out", default="bench_out/train_sim")
  parser.add_argument("--encoder", default="minilm", help="minilm (default) or hashing (fast, for smoke runs)")
  parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                      help="config override for the seeded runs, repeatable (e.g. --set stage1.run_skip_credit=role)")
  args = parser.parse_args()
  out = pathlib.Path(args.out).absolute()
  out.mkdir(parents=True, exist_ok=True)
  encoder = encoders.make_encoder(args.encoder, cache_dir=out / "embeddings")
  seeds = [run_seed(int(s), args.steps, out, encoder, args.samples_per_graph, args.set)
           for s in args.seeds.split(",") if s]
  every = max(1, args.credit_steps // 20)
  multi = credit_run(0.5, args.credit_steps, out, encoder)
  system_only = credit_run(0.0, args.credit_steps, out, encoder)
  png = out / "credit_assignment.png"
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    xs = [i * every for i in range(len(multi))]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, multi, label="alpha = 0.5 (multi-level)")
    ax.plot(xs, system_only, label="alpha = 0 (system reward only)")
    ax.set_xlabel("stage-1 step")
    ax.set_ylabel("right model chosen (fraction of val queries)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    ax.set_title("Credit assignment: a masked role's model choice")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
  except ImportError:
    png = None
  def mean(key: str, space: str | None = None):
    values = [(s[space] if space else s)[key] for s in seeds]
    return round(float(np.mean(values)), 4) if seeds else None

  print(jsonio.strict_json({
      "bench": "train_sim",
      "seeds": seeds,
      **{f"mean_{space}_{k}": mean(k, space) for space in ("free", "inference")
         for k in ("gap", "gap_closed", "gap_closed_initial", "trained", "best", "random")},
      "mean_val_auc": mean("val_auc"),
      "mean_test_auc_sampled_labels": mean("test_auc_sampled_labels"),
      "mean_test_auc_vs_oracle_labels": mean("test_auc_vs_oracle_labels"),
      "mean_truth_auc_sampled_labels": mean("truth_auc_sampled_labels"),
      "mean_trained_assignment_random_dag": mean("trained_assignment_random_dag"),
      "episodes_per_s": mean("episodes_per_s"),
      "credit_curve_every_steps": every,
      "credit_alpha_0.5": [round(v, 3) for v in multi],
      "credit_alpha_0": [round(v, 3) for v in system_only],
      "credit_steps_to_0.9_alpha_0.5": steps_to_reach(multi, every),
      "credit_steps_to_0.9_alpha_0": steps_to_reach(system_only, every),
      "credit_plot": str(png) if png else None,
  }, indent=None))


if __name__ == "__main__":
  main()
