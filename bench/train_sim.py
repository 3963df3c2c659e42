"""What training learns on the simulated pool, judged by the simulator's exact oracle.

Prints one JSON line. For each simulator seed it trains both stages with the
default MATH config (synthetic problems, simulated pool) and, on held-out test
queries, computes with the oracle (expected values, no sampling noise):

- ``best``: the oracle's best assignment on its best DAG of the candidate pool;
- ``random``: a uniformly random assignment (models or skip) on a random DAG;
- ``trained``: the selector's argmax assignment on the classifier's chosen DAG;
- ``gap_closed`` = (trained - random) / (best - random), on mean rewards;
- the stage-2 classifier's mean per-query ROC-AUC on held-out queries: on the
  validation split that picked its epoch (``val_auc``), on the test split against
  labels made exactly as training makes them (``test_auc_sampled_labels``: G DAGs
  run ``samples_per_graph`` times each, top-k solved by mean reward) and against
  the oracle's noise-free best ``ORACLE_TOP_K`` candidates by expected reward
  (``test_auc_vs_oracle_labels``); what ranking by the exact expected reward
  scores against the same sampled test labels (``truth_auc_sampled_labels``: the
  labels' own noise, not a ceiling, since a classifier may also learn what the
  labels' sampling favours); and the expected reward of the trained assignment on
  the chosen DAG against the same assignment on a random DAG;
- stage-1 episodes (queries executed and graded) per second.

Then a credit-assignment scenario: one role's model choice matters for its own
output while a strong decision model that ignores the roles masks it in the
final answer. It trains with alpha = 0.5 (multi-level reward) and alpha = 0
(system reward only), prints both learning curves (fraction of that role's
synthesizer picks that are the right model) and writes a PNG.

    python bench/train_sim.py [--seeds 0,1,2,3,4] [--steps N] [--samples_per_graph S] [--out bench_out/train_sim]
                              [--set stage1.run_skip_credit=role --set selector.skip_head=shared ...]
    python bench/train_sim.py --seeds ''     # the credit-assignment scenario alone (about a minute)

About 2.5 minutes per seed on 2 CPU cores (stage 2's runs dominate).
"""

from __future__ import annotations

import argparse
import ast
import json
import pathlib
import shutil
import time

import numpy as np

from hieramas_jax import config as base_config
from hieramas_jax import encoders
from hieramas_jax.llm import cache as llm_cache
from hieramas_jax.llm import sim
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


def oracle_figures(env, oracle, s1, s2, pool, *, n_random: int = 32,
                   seed: int = 0) -> tuple[dict[str, float], np.ndarray]:
  """Mean oracle figures, and the expected reward [test queries, K] of the trained assignment on every pool DAG."""
  problems = env.splits["test"]
  n = len(problems)
  learned = rollout.greedy_actions(env, s1.graphdef, s1.params, "test", np.arange(n))
  chosen, scores = evaluation.choose_graphs(env, s2.graphdef, s2.params, "test", pool)
  rng = np.random.default_rng(seed)
  random_dag_idx = rng.integers(0, len(pool), n)
  rand_actions = evaluation.random_actions(env, n * n_random, seed + 1).reshape(n, n_random, *learned.shape[1:])
  rand_dags = rng.integers(0, len(pool), (n, n_random))
  best_by_type: dict[tuple[str, int], float] = {}
  rows = {"trained": [], "trained_assignment_random_dag": [], "random": [], "best": []}
  oracle_aucs = []
  pool_expected = np.zeros((n, len(pool)))
  for i, p in enumerate(problems):
    key = (p.subject, p.level)
    if key not in best_by_type:
      _, _, best, _ = oracle.best_dag(p.subject, p.level, list(pool), env.decision_model,
                                      proposers=env.config.selector.num_proposers, models=env.model_names,
                                      restarts=3)
      best_by_type[key] = best.expected_reward
    ev = lambda actions, adj: expected_reward(env, oracle, p, actions, adj)  # noqa: E731
    rows["best"].append(best_by_type[key])
    rows["trained"].append(ev(learned[i], pool[chosen[i]]))
    rows["trained_assignment_random_dag"].append(ev(learned[i], pool[random_dag_idx[i]]))
    rows["random"].append(float(np.mean([ev(rand_actions[i, j], pool[rand_dags[i, j]]) for j in range(n_random)])))
    # The classifier's ranking of the whole pool against the oracle's (noise-free) top-k by expected reward.
    expected = pool_expected[i] = [ev(learned[i], g) for g in pool]
    kth = np.sort(expected)[::-1][min(ORACLE_TOP_K, len(pool)) - 1]
    oracle_aucs.append(metrics.roc_auc(scores[i], expected >= kth - 1e-12))
  means = {k: float(np.mean(v)) for k, v in rows.items()}
  gap = means["best"] - means["random"]
  means["gap"] = gap
  means["gap_closed"] = (means["trained"] - means["random"]) / gap if gap > 0 else float("nan")
  means["test_auc_vs_oracle_labels"] = float(np.nanmean(oracle_aucs))
  return means, pool_expected


def sampled_label_figures(env, s1, s2, pool, pool_expected: np.ndarray) -> dict[str, float]:
  """The classifier and the exact truth (``pool_expected`` of ``oracle_figures``) against test labels made
  exactly as training makes them."""
  test = stage2.collect(env, s1.graphdef, s1.params, "test", pool)
  scores = stage2.val_auc(env, s2.graphdef, s2.params, test, split="test")[0]
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


def apply_overrides(c, overrides: list[str]) -> None:
  """``section.field=value`` overrides of the config (values parsed as Python literals, else strings)."""
  for item in overrides:
    name, sep, text = item.partition("=")
    if not sep:
      raise SystemExit(f"--set {item!r}: expected section.field=value, e.g. --set stage1.run_skip_credit=role")
    *sections, field = name.split(".")
    node = c
    for section in sections:
      node = node[section]
    if field not in node:
      raise SystemExit(f"--set {item!r}: the config has no field {name!r}")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    node[field] = value


def run_seed(seed: int, steps: int | None, out: pathlib.Path, encoder, samples_per_graph: int,
             overrides: list[str] = ()) -> dict[str, float]:
  c = math_config()
  apply_overrides(c, list(overrides))
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
  s2 = stage2.train_classifier(env, workdir, writer, s1.graphdef, s1.params, progress=False)
  writer.close()
  pool = stage2.candidate_pool(env)
  backend = env.backend.backend if isinstance(env.backend, llm_cache.CachedBackend) else env.backend
  oracle = sim.Oracle(backend.world, env.task, env.roles, c_s=c.stage1.reward_cost_solved,
                      c_f=c.stage1.reward_cost_failed)
  figures, pool_expected = oracle_figures(env, oracle, s1, s2, pool, seed=seed)
  figures.update(sampled_label_figures(env, s1, s2, pool, pool_expected))
  env.close()
  figures.update(seed=seed, val_auc=s2.best_val_auc,
                 episodes_per_s=c.stage1.steps * c.stage1.batch_size / s1_time, stage1_s=s1_time)
  return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()}


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
  curve: list[float] = []
  original = stage1.validate

  def record(env_, graphdef, params, pool, where=""):
    del where
    del pool
    actions = rollout.greedy_actions(env_, graphdef, params, "val", np.arange(len(env_.splits["val"])))
    synth = actions[:, solver, -1]
    curve.append(float(np.mean(synth == env_.model_names.index(right))))
    return {"val_reward": 0.0, "val_reward_se": 0.0, "val_accuracy": curve[-1], "val_cost": 0.0, "val_failed": 0.0}

  record(env, *stage1.build_selector(env), None)  # step 0: the initial selector (same seed as training)

  stage1.validate = record
  try:
    writer = MetricWriter(workdir, tensorboard=False)
    stage1.train_selector(env, workdir, writer, progress=False)
    writer.close()
  finally:
    stage1.validate = original
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
  mean = lambda k: round(float(np.mean([s[k] for s in seeds])), 4) if seeds else None  # noqa: E731
  print(json.dumps({
      "bench": "train_sim",
      "seeds": seeds,
      "mean_gap": mean("gap"), "mean_gap_closed": mean("gap_closed"), "mean_val_auc": mean("val_auc"),
      "mean_test_auc_sampled_labels": mean("test_auc_sampled_labels"),
      "mean_test_auc_vs_oracle_labels": mean("test_auc_vs_oracle_labels"),
      "mean_truth_auc_sampled_labels": mean("truth_auc_sampled_labels"),
      "mean_trained": mean("trained"), "mean_trained_assignment_random_dag": mean("trained_assignment_random_dag"),
      "episodes_per_s": mean("episodes_per_s"),
      "credit_curve_every_steps": every,
      "credit_alpha_0.5": [round(v, 3) for v in multi],
      "credit_alpha_0": [round(v, 3) for v in system_only],
      "credit_steps_to_0.9_alpha_0.5": steps_to_reach(multi, every),
      "credit_steps_to_0.9_alpha_0": steps_to_reach(system_only, every),
      "credit_plot": str(png) if png else None,
  }))


if __name__ == "__main__":
  main()
