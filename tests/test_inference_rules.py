"""The paper's inference rules (skip cap, proposer rotation), its Full-Graph / Random-Graph baselines, the
per-stage density ranges and stage 2's own c_s."""

import asyncio

import numpy as np
import pytest

from hieramas_jax import baselines, config as base_config, executor, graphs, inference_rules, rewards, system
from hieramas_jax.llm.base import Response, Usage
from hieramas_jax.llm.sim_task import ArithmeticTask
from hieramas_jax.models import selector as sel
from hieramas_jax.tasks.base import Problem
from hieramas_jax.train import builders, environment, rollout, stage2

import test_system as ts  # pylint: disable=g-bad-import-order  (helpers of the inference tests)


def _skip_dominated_logits(b=2, r=3, p=2, m=4, seed=0):
  """Logits [B, R, P+1, M+1] whose argmax is skip everywhere; distinct p(skip) per role."""
  rng = np.random.default_rng(seed)
  logits = 0.1 * rng.normal(size=(b, r, p + 1, m + 1))  # distinct model logits, small beside the skip steps
  # Role j's skip margin grows with j: role r-1 has the highest p(skip), role 0 the lowest.
  logits[..., -1] = 10.0 + 0.5 * np.arange(r)[None, :, None]
  return logits


def _valid(shape, excluded=()):
  valid = np.ones(shape, bool)
  for m in excluded:
    valid[..., m] = False
  return valid


def test_without_rules_every_role_whose_argmax_is_skip_is_dropped():
  logits = _skip_dominated_logits()
  actions = inference_rules.apply_inference_rules(logits, _valid(logits.shape), np.ones(3, bool))
  assert (actions == 4).all()  # today's rule (cap -1): every role skipped, the decision node answers alone
  np.testing.assert_array_equal(actions, logits.argmax(-1))


def test_skip_cap_zero_runs_every_role_on_its_best_model():
  logits = _skip_dominated_logits()
  actions = inference_rules.apply_inference_rules(logits, _valid(logits.shape), np.ones(3, bool), max_skipped_roles=0)
  np.testing.assert_array_equal(actions[:, :, -1], logits[:, :, -1, :-1].argmax(-1))
  assert (actions[:, :, :-1] == 4).all()  # proposers keep their own argmax (skip) without rotation


def test_skip_cap_drops_at_most_that_many_roles_highest_skip_probability_first():
  logits = _skip_dominated_logits(r=4)
  actions = inference_rules.apply_inference_rules(logits, _valid(logits.shape), np.ones(4, bool), max_skipped_roles=2)
  dropped = actions[:, :, -1] == 4
  assert (dropped.sum(1) == 2).all()
  np.testing.assert_array_equal(dropped, np.broadcast_to([False, False, True, True], dropped.shape))
  # A cap above the number of skip-wanting roles drops them all but one answer role.
  actions = inference_rules.apply_inference_rules(logits, _valid(logits.shape), np.ones(4, bool), max_skipped_roles=9)
  np.testing.assert_array_equal(actions[:, :, -1] == 4, np.broadcast_to([False, True, True, True], (2, 4)))


def test_skip_cap_always_keeps_one_answer_giving_role():
  logits = _skip_dominated_logits(b=1, r=3)
  gives_answer = np.array([False, True, False])
  actions = inference_rules.apply_inference_rules(logits, _valid(logits.shape), gives_answer, max_skipped_roles=3)
  assert (actions[0, :, -1] == 4).tolist() == [True, False, True]
  # Two answer roles: the one with the lower p(skip) (role 0) runs.
  actions = inference_rules.apply_inference_rules(logits, _valid(logits.shape), np.array([True, False, True]),
                                          max_skipped_roles=3)
  assert (actions[0, :, -1] == 4).tolist() == [False, True, True]


def test_skip_cap_leaves_running_roles_and_allowed_models_alone():
  logits = _skip_dominated_logits(b=1, r=3)
  logits[0, 1, -1, 2] = 100.0  # role 1 wants model 2, not skip
  best = logits[0, 0, -1, :-1].argmax()
  valid = _valid(logits.shape, excluded=[best])  # role 0's best model is excluded: it takes the next best
  actions = inference_rules.apply_inference_rules(logits, valid, np.ones(3, bool), max_skipped_roles=1)
  assert actions[0, 1, -1] == 2 and actions[0, 2, -1] == 4
  masked = np.where(valid[0, 0, -1, :-1], logits[0, 0, -1, :-1], -np.inf)
  assert actions[0, 0, -1] == masked.argmax() != best


def test_rotation_gives_proposers_the_top_models_round_robin():
  b, r, p, m = 2, 2, 5, 6
  logits = np.random.default_rng(3).normal(size=(b, r, p + 1, m + 1))
  logits[..., :-1, -1] = 50.0  # every proposer's argmax is skip: rotation ignores skip, as in the paper
  logits[..., -1, -1] = -50.0  # every role runs
  valid = _valid(logits.shape, excluded=[int(logits[0, 0, 1, :-1].argmax())])
  rows = np.array([[1, 3], [0, 4]])
  actions = inference_rules.apply_inference_rules(logits, valid, np.ones(r, bool), rotate_top_n=3, rotation_row=rows)
  for q in range(b):
    for j in range(r):
      row = np.where(valid[q, j, rows[q, j], :-1], logits[q, j, rows[q, j], :-1], -np.inf)
      top = np.argsort(-row)[:3]
      assert actions[q, j, :-1].tolist() == [int(top[i % 3]) for i in range(p)]
      assert valid[q, j, 0, actions[q, j, :-1]].all()  # never an excluded model
  np.testing.assert_array_equal(actions[..., -1], np.where(valid, logits, -np.inf)[..., -1, :].argmax(-1))
  # top-N larger than the allowed models: the allowed ones, in order.
  few = _valid(logits.shape, excluded=range(2, m))
  actions = inference_rules.apply_inference_rules(logits, few, np.ones(r, bool), rotate_top_n=4, rotation_row=rows)
  assert set(actions[..., :-1].ravel().tolist()) <= {0, 1}


def test_rotation_skips_dropped_roles_and_checks_its_rows():
  logits = _skip_dominated_logits(b=1, r=3, p=2)
  rows = np.zeros((1, 3), np.int64)
  actions = inference_rules.apply_inference_rules(logits, _valid(logits.shape), np.ones(3, bool), max_skipped_roles=1,
                                          rotate_top_n=2, rotation_row=rows)
  assert actions[0, 2, -1] == 4 and (actions[0, 2, :-1] == 4).all()  # the dropped role makes no calls
  assert (actions[0, :2, :-1] != 4).all()
  with pytest.raises(ValueError, match="rotation_row"):
    inference_rules.apply_inference_rules(logits, _valid(logits.shape), np.ones(3, bool), rotate_top_n=2,
                                  rotation_row=np.full((1, 3), 2))


def test_rotation_rows_are_seeded_per_query_not_per_batch():
  problems = [Problem(uid=f"q{i}", question=str(i), answer="") for i in range(40)]
  rows = inference_rules.rotation_rows(0, problems, 3, 2)
  assert rows.shape == (40, 3) and set(np.unique(rows)) == {0, 1}
  np.testing.assert_array_equal(inference_rules.rotation_rows(0, problems[::-1], 3, 2), rows[::-1])
  np.testing.assert_array_equal(inference_rules.rotation_rows(0, problems[5:6], 3, 2), rows[5:6])
  assert not np.array_equal(inference_rules.rotation_rows(1, problems, 3, 2), rows)


# ---------------------------------------------------------------------------
# The rules in HieraMAS.plan/run and in training's held-out comparison
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def skipping(tmp_path_factory):
  """A trained-like workdir whose selector wants to skip every position (skip offset +20)."""
  workdir = tmp_path_factory.mktemp("skipping")
  config = ts.small_config()
  (sel_gd, sel_p), (cls_gd, cls_p) = ts.fresh_models(config)
  sel_p["skip_bias"] = np.full_like(np.asarray(sel_p["skip_bias"]), 20.0)
  ts.save_trained(workdir, config, sel_p, cls_p)
  hm = system.HieraMAS.from_workdir(workdir)
  yield {"workdir": workdir, "config": config, "selector": (sel_gd, sel_p), "system": hm}
  hm.close()


def test_plan_follows_the_skip_cap_and_run_makes_those_calls(skipping):
  hm = skipping["system"]
  problems = ts.test_problems(hm.config, 4)
  assert hm.config.inference.max_skipped_roles == -1
  assert all(row[-1] is None for p in hm.plan(problems) for row in p.assignment)  # today: every role dropped
  try:
    hm.set_inference_rules(max_skipped_roles=0)
    planned = hm.plan(problems)
    assert all(row[-1] is not None for p in planned for row in p.assignment)
    results = hm.run(planned)
    assert all(r.num_calls == len(hm.roles) + 1 and not r.failed for r in results)  # 3 synthesizers + decision
    hm.set_inference_rules(max_skipped_roles=2)
    answer_roles = [j for j, role in enumerate(hm.roles) if role.gives_answer]  # Math Solver, Inspector
    for p in hm.plan(problems):
      dropped = [j for j, row in enumerate(p.assignment) if row[-1] is None]
      assert 1 <= len(dropped) <= 2 and not set(answer_roles) <= set(dropped)
    hm.set_inference_rules(max_skipped_roles=0, rotate_top_n=2)
    rotated = hm.plan(problems)
    # Deterministic per query: the same in any batch order.
    assert [p.assignment for p in hm.plan(problems[::-1])][::-1] == [p.assignment for p in rotated]
    logits = hm.selector_logits(problems)
    rows = inference_rules.rotation_rows(hm.config.seed, problems, len(hm.roles), hm.config.selector.num_proposers)
    for b, p in enumerate(rotated):
      for j, row in enumerate(p.assignment):
        top = np.argsort(-logits[b, j, rows[b, j], :-1], kind="stable")[:2]
        assert row[:-1] == [hm.model_names[int(top[i % 2])] for i in range(len(row) - 1)]
    with pytest.raises(ValueError, match="max_skipped_roles"):
      hm.set_inference_rules(max_skipped_roles=-2)
  finally:
    hm.set_inference_rules(max_skipped_roles=-1, rotate_top_n=0)


def test_candidate_density_range_of_a_loaded_system_can_change(skipping):
  hm = skipping["system"]
  full_range = hm.candidate_pool()
  try:
    hm.set_inference_rules(candidate_density_range=(1.0, 1.0))
    pool = hm.candidate_pool()
    # 3 roles at density 1: the 6 complete DAGs (one per order), where the full range also has 2-edge ones.
    assert len(pool) == 6 and (pool.sum(axis=(1, 2)) == 3).all() and (full_range.sum(axis=(1, 2)) == 2).any()
    with pytest.raises(ValueError, match="graphs.candidate_density_range"):
      hm.set_inference_rules(candidate_density_range=(0.9, 0.2))
  finally:
    hm.set_inference_rules(candidate_density_range=(0.0, 1.0))
  np.testing.assert_array_equal(hm.candidate_pool(), full_range)


def test_training_comparison_applies_the_same_rules_as_inference(skipping, tmp_path):
  config = ts.small_config()
  config.inference.max_skipped_roles, config.inference.rotate_top_n = 1, 2
  env = environment.build_environment(config, tmp_path / "env")
  hm = skipping["system"]
  try:
    sel_gd, sel_p = skipping["selector"]
    problems = env.splits["test"]
    learned = rollout.inference_greedy_actions(env, sel_gd, sel_p, "test", np.arange(len(problems)))
    assert ((learned[:, :, -1] == len(env.specs)).sum(1) == 1).all()  # exactly one role dropped per query
    hm.set_inference_rules(max_skipped_roles=1, rotate_top_n=2)
    assert hm.assignments(problems) == sel.actions_to_assignment(learned, hm.model_names)
  finally:
    hm.set_inference_rules(max_skipped_roles=-1, rotate_top_n=0)
    env.close()


# ---------------------------------------------------------------------------
# The paper's Full-Graph and Random-Graph baselines
# ---------------------------------------------------------------------------


class _Recorder:
  """Answers every call with a boxed 0 and records (model, user prompt)."""

  def __init__(self):
    self.requests = []

  def known_models(self):
    return {"big", "small"}

  async def complete(self, model, messages, *, sample_index=0, **params):
    del sample_index, params
    self.requests.append((model, messages[-1]["content"]))
    await asyncio.sleep(0)
    return Response(model=model, text=f"{model} says \\boxed{{0}}", usage=Usage(3, 2), cost=0.001, latency=0.1)


def test_paper_baselines_use_the_decision_model_in_every_role_without_proposers():
  task = ArithmeticTask()
  problems = task.load("test", n=3)
  n = len(task.roles)
  for adjacency in (graphs.full(n), graphs.random_dag(np.random.default_rng(0), n, (0.3, 0.7))):
    plans = baselines.single_call_role_plans(problems, task.roles, "big", adjacency, num_proposers=2)
    assert all(p.decision_model == "big" and p.assignment == [[None, None, "big"]] * n for p in plans)
    backend = _Recorder()
    results = executor.execute(plans, backend, task)
    for res in results:
      assert len(res.calls) == n + 1 and {c.model for c in res.calls} == {"big"}
      assert [c.kind for c in res.calls].count(executor.PROPOSER) == 0
      assert not res.errors
  assert all(not r.failed for r in results)
  # The full DAG: the last role of the order reads every earlier role.
  full = baselines.single_call_role_plans(problems[:1], task.roles, "big", graphs.full(n))
  backend = _Recorder()
  executor.execute(full, backend, task)
  last_prompt = backend.requests[n - 1][1]
  assert all(f"[{r.name}]" in last_prompt for r in task.roles[:-1])
  with pytest.raises(ValueError, match="one per query"):
    baselines.single_call_role_plans(problems, task.roles, "big", np.zeros((2, n, n), np.int8))


def test_paper_random_graph_is_one_seeded_dag_in_the_candidate_density_range():
  a = baselines.paper_random_dag(1, 8, (0.3, 0.7))
  np.testing.assert_array_equal(a, baselines.paper_random_dag(1, 8, (0.3, 0.7)))
  assert not np.array_equal(a, baselines.paper_random_dag(2, 8, (0.3, 0.7)))
  graphs.validate_adjacency(a, 8)
  lo, hi = graphs.edge_count_range(8, (0.3, 0.7))
  assert lo <= a.sum() <= hi


# ---------------------------------------------------------------------------
# Density ranges, stage 2's c_s and old checkpoints
# ---------------------------------------------------------------------------


def test_candidate_and_stage2_pools_follow_their_own_density_ranges(tmp_path):
  config = ts.small_config()
  config.graphs.density_range = (0.0, 1.0)
  config.graphs.stage2_density_range = (0.8, 1.0)
  config.graphs.candidate_density_range = (0.3, 0.5)

  class Env:  # what the pools read of an Environment; 8 roles give ranges that share no edge count
    num_roles = 8

  Env.config = config
  candidates, data = stage2.candidate_pool(Env), stage2.data_pool(Env)
  total = 8 * 7 // 2
  assert all(0.3 * total - 1 <= a.sum() <= 0.5 * total for a in candidates)
  assert all(a.sum() >= 0.8 * total - 1 for a in data)
  config.graphs.stage2_density_range = config.graphs.candidate_density_range
  np.testing.assert_array_equal(stage2.data_pool(Env), candidates)  # equal ranges: the same DAGs


def test_stage2_labels_use_stage2_reward_cost_solved(tmp_path):
  config = ts.small_config()
  config.reward.stage2_cost_solved, config.reward.cost_solved = 1.0, 300.0
  config.stage2.samples_per_graph, config.stage2.graphs_per_query = 1, 4
  env = environment.build_environment(config, tmp_path / "run")
  try:
    sel_gd, sel_p = builders.build_selector(config, env.query_role_emb["train"].shape[-1], env.option_emb.shape[-1])
    data = stage2.collect(env, sel_gd, sel_p, "val", stage2.data_pool(env))
  finally:
    env.close()
  ok = data.valid
  assert ok.any() and (data.solved & ok).any()
  want = np.asarray(rewards.output_reward(data.solved, data.cost, 1.0, 300.0))
  np.testing.assert_allclose(data.rewards[ok], want[ok], rtol=1e-5)
  stage1_cs = np.asarray(rewards.output_reward(data.solved, data.cost, 300.0, 300.0))
  assert not np.allclose(data.rewards[ok & data.solved], stage1_cs[ok & data.solved])


def test_checkpoints_from_before_the_new_fields_keep_their_behaviour():
  saved = ts.small_config().to_dict()
  del saved["inference"], saved["graphs"]["stage2_density_range"], saved["graphs"]["candidate_density_range"]
  # Written before the reward section and stage 2's own c_s: c_s, c_f and the counted cost under stage1.
  reward = saved.pop("reward")
  saved["stage1"].update(reward_cost_failed=reward["cost_failed"], system_cost=reward["system_cost"])
  saved["graphs"]["density_range"], saved["stage1"]["reward_cost_solved"] = (0.3, 0.7), 450.0
  restored = base_config.from_saved(saved)
  assert tuple(restored.graphs.stage2_density_range) == tuple(restored.graphs.candidate_density_range) == (0.3, 0.7)
  assert restored.reward.stage2_cost_solved == restored.reward.cost_solved == 450.0
  assert restored.inference.max_skipped_roles == -1 and restored.inference.rotate_top_n == 0
  fresh = base_config.from_saved(ts.small_config().to_dict())  # saved values win over the copies
  assert tuple(fresh.graphs.candidate_density_range) == (0.0, 1.0) and fresh.reward.stage2_cost_solved == 300.0


@pytest.mark.parametrize("field,value,message", [
    ("inference.max_skipped_roles", -2, "-1 for no cap"),
    ("inference.rotate_top_n", -1, "0 to give each proposer its own argmax"),
    ("graphs.stage2_density_range", (0.9, 0.2), r"graphs.stage2_density_range=\(0.9, 0.2\); give a pair"),
    ("graphs.candidate_density_range", (0.0, 0.1), "graphs.candidate_density_range: .*impossible"),
    ("reward.stage2_cost_solved", -1.0, "reward.stage2_cost_solved"),
])
def test_new_fields_are_validated(field, value, message):
  config = ts.small_config()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(environment.ConfigError, match=message):
    environment.validate_config(config, num_roles=3)
