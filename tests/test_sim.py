"""The simulated pool, its probability model and its oracle."""

import asyncio
import itertools
import math
import random
import time

import numpy as np
import pytest

from hieramas_jax import executor, graphs
from hieramas_jax.executor import Plan
from hieramas_jax.graphs import InvalidGraphError
from hieramas_jax.llm.sim import search as oracle_search
from hieramas_jax.llm.base import UnknownModelError
from hieramas_jax.llm.sim import (Oracle, ProblemRegistry, SimModel, SimulatedBackend, SimWorld, SkillTable,
                                  default_world, reward_of)
from hieramas_jax.llm.sim_task import ArithmeticTask
from hieramas_jax.llm.tokens import count_message_tokens
from hieramas_jax.tasks.base import Problem

TASK = ArithmeticTask()
ROLES = TASK.roles
CHAIN = [[0, 1, 0], [0, 0, 1], [0, 0, 0]]


def _messages_with_candidates(problem, right: int, wrong: int, seed: int = 0):
  rng = random.Random(seed)
  texts = [TASK.render_answer(problem, True, rng) for _ in range(right)]
  texts += [TASK.render_answer(problem, False, rng) for _ in range(wrong)]
  rng.shuffle(texts)
  return TASK.synthesizer_messages(problem, ROLES[1], texts, [("Math Solver", "no answer here")])


def test_reads_problem_and_candidates_from_the_prompt():
  problems = TASK.load("test", n=30)
  backend = SimulatedBackend(default_world(), TASK, problems)
  for right, wrong in [(0, 0), (2, 0), (1, 3), (0, 2)]:
    reading = backend.read(_messages_with_candidates(problems[7], right, wrong))
    assert (reading.problem.uid, reading.n_correct, reading.n_wrong) == (problems[7].uid, right, wrong)
  # Predecessor outputs count as candidates too.
  messages = TASK.proposer_messages(problems[3], ROLES[1], [("Math Solver", TASK.render_answer(
      problems[3], True, random.Random(1)))])
  assert (backend.read(messages).n_correct, backend.read(messages).n_wrong) == (1, 0)


def test_instruction_text_that_looks_like_an_answer_is_not_a_candidate():

  class LoudInstructions(ArithmeticTask):
    answer_instruction = "End with a line like \\boxed{42}."

  task = LoudInstructions()
  problem = task.load("test", n=1)[0]
  backend = SimulatedBackend(default_world(), task, [problem])
  messages = task.synthesizer_messages(problem, ROLES[0], [task.render_answer(problem, True, random.Random(0))], [])
  reading = backend.read(messages)
  assert (reading.n_correct, reading.n_wrong) == (1, 0)


def test_registry_finds_questions_anywhere_at_line_starts_and_prefers_the_longest():
  short = Problem("p1", "What is the capital of France?", "Paris")
  longer = Problem("p2", "What is the capital of France? Answer in lowercase.", "paris")
  tiny = Problem("p3", "2+2?", "4")
  registry = ProblemRegistry([short, longer, tiny])
  assert registry.find(f"Intro line\n{longer.question}\nmore")[0].uid == "p2"
  assert registry.find(f"Intro line\n{short.question} Be brief.")[0].uid == "p1"
  assert registry.find("Problem:\n2+2?")[0].uid == "p3"
  assert registry.find("Nothing registered here\nat all") is None
  backend = SimulatedBackend(default_world(), TASK, [short])
  response = asyncio.run(backend.complete("GPT-4o-mini", [{"role": "user", "content": "Unseen question?"}]))
  assert not response.ok and "no registered problem" in response.error
  with pytest.raises(UnknownModelError, match="GPT-9"):
    asyncio.run(backend.complete("GPT-9", [{"role": "user", "content": short.question}]))


def test_answers_are_deterministic_per_sample_and_in_the_tasks_format():
  problems = TASK.load("test", n=5)
  backend = SimulatedBackend(default_world(seed=1), TASK, problems)
  messages = TASK.proposer_messages(problems[0], ROLES[0], [])
  a = backend.answer("Qwen3-8B", messages, 0)
  b = backend.answer("Qwen3-8B", messages, 0)
  others = [backend.answer("Qwen3-8B", messages, i) for i in range(1, 40)]
  assert a == b
  assert len({o.text for o in others}) == 39  # distinct samples
  for r in [a, *others]:
    assert TASK.extract(r.text) is not None  # the real extractor finds the answer
    assert 200 <= r.usage.completion_tokens <= 500  # Qwen3-8B's range
    assert abs(len(r.text) / 4 - r.usage.completion_tokens) <= 2
  assert a.usage.prompt_tokens == count_message_tokens(messages, exact=False)
  assert a.usage.prompt_tokens == pytest.approx(count_message_tokens(messages), rel=0.3)  # vs tiktoken
  grades = [TASK.grade(problems[0], o.text) for o in others]
  assert 0 < sum(grades) < len(grades)


def test_results_do_not_depend_on_concurrency_order():
  problems = TASK.load("test", n=60)
  plans = [Plan(p, ROLES, [["Qwen3-8B", "Llama-3.1-8B", "GPT-4o-mini"]] * 3, CHAIN, "GPT-5-nano") for p in problems]
  first = executor.execute(plans, SimulatedBackend(default_world(seed=5), TASK, problems), TASK)
  backwards = executor.execute(plans[::-1], SimulatedBackend(default_world(seed=5), TASK, problems), TASK)[::-1]
  assert [r.final_text for r in first] == [r.final_text for r in backwards]
  assert [r.cost_usd for r in first] == [r.cost_usd for r in backwards]
  other_seed = executor.execute(plans, SimulatedBackend(default_world(seed=6), TASK, problems), TASK)
  assert [r.final_text for r in first] != [r.final_text for r in other_seed]


def test_probability_model_shape():
  world = default_world()
  p = world.p_correct
  assert p("GPT-5-mini", "algebra", 3, 0, 0) > p("Llama-3.1-8B", "algebra", 3, 0, 0)
  assert p("GPT-4o-mini", "algebra", 1, 0, 0) > p("GPT-4o-mini", "algebra", 5, 0, 0)
  assert p("GPT-4o-mini", "algebra", 3, 2, 0) > p("GPT-4o-mini", "algebra", 3, 1, 0) > p("GPT-4o-mini", "algebra",
                                                                                        3, 0, 0)
  assert p("GPT-4o-mini", "algebra", 3, 0, 2) < p("GPT-4o-mini", "algebra", 3, 0, 0)
  # A better picker gains more from the same correct proposals.
  gain = lambda m: p(m, "x", 3, 2, 1) - p(m, "x", 3, 0, 0)  # pylint: disable=unnecessary-lambda-assignment
  strong_pick = dataclass_replace_pick(world, "GPT-4o-mini", 2.0)
  assert strong_pick.p_correct("GPT-4o-mini", "x", 3, 2, 1) - strong_pick.p_correct("GPT-4o-mini", "x", 3, 0, 0) > \
      gain("GPT-4o-mini")


def dataclass_replace_pick(world, name, pick):
  import dataclasses  # pylint: disable=g-import-not-at-top
  models = dict(world.models)
  models[name] = dataclasses.replace(models[name], pick=pick)
  return dataclasses.replace(world, models=models)


def _specialist_world(**kwargs):
  """Three models: 'math-whiz' is the only one good at addition, 'mul-whiz' at multiplication."""
  models = {
      "cheap": SimModel("cheap", 0.02, 0.03, latency_s=0.1, pick=1.5, completion_tokens=(100, 200)),
      "math-whiz": SimModel("math-whiz", 0.10, 0.40, latency_s=0.3, pick=1.0, completion_tokens=(200, 300)),
      "mul-whiz": SimModel("mul-whiz", 0.10, 0.40, latency_s=0.3, pick=1.0, completion_tokens=(200, 300)),
  }
  weak, strong = [-2.0] * 5, [3.0, 2.8, 2.5, 2.2, 2.0]
  table = {("cheap", "*"): weak, ("math-whiz", "addition"): strong, ("math-whiz", "*"): weak,
           ("mul-whiz", "multiplication"): strong, ("mul-whiz", "*"): weak}
  return SimWorld(models=models, skill=SkillTable(ability={}, table=table), **kwargs)


def test_injected_skill_table_drives_who_solves_what():
  world = _specialist_world(seed=2)
  problems = TASK.load("test", n=300, subjects=("addition", "multiplication"), levels=(3,))
  backend = SimulatedBackend(world, TASK, problems)
  rates = {}
  for model in world.models:
    plans = [Plan(p, ROLES, [[None, model], [None, None], [None, None]], np.zeros((3, 3)), model)
             for p in problems]
    results = executor.execute(plans, backend, TASK)
    for subject in ("addition", "multiplication"):
      idx = [i for i, p in enumerate(problems) if p.subject == subject]
      rates[model, subject] = np.mean([TASK.grade(problems[i], results[i].final_text) for i in idx])
  assert rates["math-whiz", "addition"] > 0.9 and rates["math-whiz", "multiplication"] < 0.3
  assert rates["mul-whiz", "multiplication"] > 0.9 and rates["mul-whiz", "addition"] < 0.3
  assert rates["cheap", "addition"] < 0.3


def test_oracle_matches_the_text_simulator():
  """Empirical solve rates over 1500 queries vs the oracle's exact values.

  Tolerance: 4 standard errors of a 1500-sample proportion (<= 0.052); costs within 2%.
  """
  world = default_world(seed=11)
  n = 1500
  problems = TASK.load("oracle", n=n, subjects=("multiplication",), levels=(4,))
  backend = SimulatedBackend(world, TASK, problems)
  assignment = [["Llama-3.1-8B", "Qwen3-8B", "GPT-4o-mini"], [None, "Gemma-3-27B", "GPT-5-nano"],
                ["Qwen3-8B", None, None]]  # the Planner is dropped
  adjacency = [[0, 1, 1], [0, 0, 1], [0, 0, 0]]
  plans = [Plan(p, ROLES, assignment, adjacency, "Qwen3-Next-80B-A3B") for p in problems]
  results = executor.execute(plans, backend, TASK)
  solved = np.mean([TASK.grade(p, r.final_text) for p, r in zip(problems, results)])
  role0 = np.mean([TASK.grade(p, r.role_outputs[0]) for p, r in zip(problems, results)])
  cost = np.mean([r.cost_usd for r in results])
  oracle = Oracle(world, TASK, ROLES).evaluate("multiplication", 4, assignment, adjacency, "Qwen3-Next-80B-A3B",
                                               question=problems[0].question)
  for empirical, exact in [(solved, oracle.solve_rate), (role0, oracle.role_solve_rates[0])]:
    tolerance = 4 * math.sqrt(exact * (1 - exact) / n)
    assert abs(empirical - exact) < tolerance, (empirical, exact, tolerance)
  assert oracle.role_solve_rates[2] is None
  assert cost == pytest.approx(oracle.expected_cost, rel=0.02)
  assert oracle.expected_reward == pytest.approx(reward_of(oracle.solve_rate, oracle.expected_cost))


def test_oracle_validates_the_dag_and_reads_only_running_predecessors():
  oracle = Oracle(default_world(seed=2), TASK, ROLES)
  assignment = [["Qwen3-8B", "GPT-4o-mini"], [None, None], [None, "GPT-5-nano"]]  # the Inspector is skipped
  with pytest.raises(InvalidGraphError, match="cycle: 0 -> 1 -> 2 -> 0"):
    oracle.evaluate("addition", 2, assignment, [[0, 1, 0], [0, 0, 1], [1, 0, 0]], "GPT-4o-mini")
  with pytest.raises(InvalidGraphError, match=r"expected \[3, 3\] for 3 roles"):
    oracle.evaluate("addition", 2, assignment, [[0, 1], [0, 0]], "GPT-4o-mini")
  # A skipped role passes nothing on: the chain through it is the empty graph for the roles that run.
  through_skipped = oracle.evaluate("addition", 2, assignment, graphs.chain(3), "GPT-4o-mini")
  assert through_skipped == oracle.evaluate("addition", 2, assignment, graphs.empty(3), "GPT-4o-mini")
  assert through_skipped != oracle.evaluate("addition", 2, assignment, [[0, 0, 1], [0, 0, 0], [0, 0, 0]],
                                            "GPT-4o-mini")


def test_reward_formula():
  assert reward_of(True, 0.0) == 1.0 and reward_of(False, 0.0) == -1.0
  assert reward_of(True, 1.0) == 0.5 and reward_of(False, 1.0) == -2.5
  assert reward_of(True, 0.001) == pytest.approx(math.exp(-0.3))
  assert reward_of(0.5, 0.001, c_s=100, c_f=100) == pytest.approx(0.5 * math.exp(-0.1) - 0.5 * math.exp(0.1))


def test_oracle_search_matches_brute_force_on_a_small_space():
  world = default_world(seed=4).with_models(["Llama-3.1-8B", "GPT-4o-mini", "DeepSeek-V3.2"])
  roles = ROLES[:2]
  oracle = Oracle(world, TASK, roles, c_s=100, c_f=100)
  adjacency = [[0, 1], [0, 0]]
  options = [None, *world.models]
  best = max(
      (oracle.evaluate("algebra", 4, [[a, b], [c, d]], adjacency, "GPT-4o-mini").expected_reward, (a, b, c, d))
      for a, c in itertools.product(options, repeat=2) for b, d in itertools.product(world.models, options)
      if True)
  found, result = oracle.best_assignment("algebra", 4, adjacency, "GPT-4o-mini", proposers=1, restarts=4)
  assert result.expected_reward == pytest.approx(best[0], abs=1e-9)
  assert result == oracle.evaluate("algebra", 4, found, adjacency, "GPT-4o-mini")


def test_oracle_finds_the_specialist_and_the_best_dag():
  world = _specialist_world()
  oracle = Oracle(world, TASK, ROLES)
  empty = np.zeros((3, 3), dtype=int)
  for subject, whiz, other in [("addition", "math-whiz", "mul-whiz"), ("multiplication", "mul-whiz", "math-whiz")]:
    assignment, result = oracle.best_assignment(subject, 3, CHAIN, "cheap", restarts=3)
    used = {m for row in assignment for m in row if m is not None}
    _, without = oracle.best_assignment(subject, 3, CHAIN, "cheap", models=["cheap", other], restarts=3)
    assert whiz in used and result.solve_rate > 0.6 and without.solve_rate < 0.2, (assignment, result, without)
    assert result.expected_reward > without.expected_reward + 1.0
  # A chain lets one specialist's output reach the others; with the decision
  # model 'cheap' and no edges, the best DAG of the pool is the one with edges.
  index, _, result, per_dag = oracle.best_dag("addition", 3, [empty, CHAIN], "cheap", restarts=2)
  assert len(per_dag) == 2 and result == per_dag[index]
  assert per_dag[index].expected_reward >= max(r.expected_reward for r in per_dag)


def test_realtime_mode_sleeps_the_simulated_latency():
  problems = TASK.load("test", n=3)
  backend = SimulatedBackend(default_world(), TASK, problems, realtime=True, latency_scale=0.05)
  messages = TASK.proposer_messages(problems[0], ROLES[0], [])
  t0 = time.perf_counter()
  response = asyncio.run(backend.complete("DeepSeek-V3.2", messages))
  assert time.perf_counter() - t0 >= 0.05 * response.latency * 0.9
  assert 1.5 * 0.8 <= response.latency <= 1.5 * 1.2  # DeepSeek-V3.2's simulated latency


def test_skill_table_validation_and_fallbacks():
  with pytest.raises(ValueError, match="one per level"):
    SkillTable(ability={}, table={("m", "s"): [1.0, 2.0]})
  table = SkillTable.from_array(["a", "b"], ["s1", "s2"], np.arange(20.0).reshape(2, 2, 5))
  assert table.logit("b", "s2", 5) == 19.0 and table.logit("a", "s1", 0) == 2.0  # level 0 -> 3
  with pytest.raises(ValueError, match="no skill for model 'a' on subject 'unseen'"):
    table.logit("a", "unseen", 3)  # no wildcard row, no ability
  with pytest.raises(UnknownModelError):
    table.logit("zz", "s1", 3)
  spread = SkillTable(ability={"a": 1.0}, subject_spread=0.5, seed=3)
  assert spread.logit("a", "x", 3) != spread.logit("a", "y", 3)
  assert spread.logit("a", "x", 3) == SkillTable(ability={"a": 1.0}, subject_spread=0.5, seed=3).logit("a", "x", 3)
  with pytest.raises(ValueError, match="no entry for model"):
    SimWorld(models={"z": SimModel("z", 0, 0)}, skill=SkillTable(ability={}))


def test_role_effects_follow_the_speaking_role_and_the_oracle_agrees():
  """A role effect changes that role's calls only; simulator and oracle use the same probabilities."""
  from hieramas_jax.llm.sim import RoleEffect
  task = ArithmeticTask()
  problems = task.load("test", n=1, seed=3)
  world = default_world(seed=1, role_effects={"Inspector": RoleEffect(solo=-4.0, gain_scale=2.0)})
  backend = SimulatedBackend(world, task, problems)
  p = problems[0]
  inspector = next(r for r in task.roles if r.name == "Inspector")
  solver = next(r for r in task.roles if r.name == "Math Solver")
  assert backend.read(task.proposer_messages(p, inspector, [])).role == "Inspector"
  assert backend.read(task.proposer_messages(p, solver, [])).role == "Math Solver"
  assert backend.read(task.decision_messages(p, [])).role is None
  base = world.p_correct("GPT-4o-mini", p.subject, p.level, 0, 0)
  assert world.p_correct("GPT-4o-mini", p.subject, p.level, 0, 0, "Inspector") < base
  assert world.p_correct("GPT-4o-mini", p.subject, p.level, 0, 0, "Math Solver") == base
  # Seeing one right answer helps the Inspector twice as much (in logit) as it helps others.
  logit = lambda q: np.log(q / (1 - q))  # noqa: E731
  d_insp = logit(world.p_correct("GPT-4o-mini", p.subject, p.level, 1, 0, "Inspector")) - logit(
      world.p_correct("GPT-4o-mini", p.subject, p.level, 0, 0, "Inspector"))
  d_solv = logit(world.p_correct("GPT-4o-mini", p.subject, p.level, 1, 0, "Math Solver")) - logit(base)
  np.testing.assert_allclose(d_insp, 2 * d_solv, rtol=1e-9)
  # The oracle sees the topology effect: the Inspector after the Solver beats the Inspector alone.
  roles = [solver, inspector]
  oracle = Oracle(world, task, roles)
  assignment = [[None, None, "GPT-4o-mini"], [None, None, "GPT-4o-mini"]]
  fed = oracle.evaluate(p.subject, p.level, assignment, [[0, 1], [0, 0]], "GPT-4o-mini")
  alone = oracle.evaluate(p.subject, p.level, assignment, [[0, 0], [0, 0]], "GPT-4o-mini")
  assert fed.role_solve_rates[1] > alone.role_solve_rates[1] + 0.2


@pytest.mark.parametrize("c_s", [100.0, 3000.0])  # 3000: every plan but the cheapest sits on the reward's floor
def test_joint_plan_search_matches_brute_force_over_dags_and_assignments(c_s):
  world = default_world(seed=4).with_models(["Llama-3.1-8B", "GPT-4o-mini", "DeepSeek-V3.2"])
  oracle = Oracle(world, TASK, ROLES[:2], c_s=c_s, c_f=100)
  dags = [[[0, 1], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [1, 0]], [[0, 1], [0, 0]]]  # the last repeats the first
  options = [None, *world.models]
  best = max(
      (oracle.evaluate("algebra", 4, [[a, b], [c, d]], dag, "GPT-4o-mini").expected_reward, k)
      for k, dag in enumerate(dags[:3])
      for a, b, c, d in itertools.product(options, repeat=4))
  found = oracle_search.best_plan(oracle, "algebra", 4, dags, "GPT-4o-mini", proposers=1, restarts=4)
  # A local search: at c_s=3000 it ends on the mirror image of the optimum (roles and edge swapped), 1.6e-5 below.
  assert found.result.expected_reward == pytest.approx(best[0], abs=1e-4)
  assert found.dag_index in (0, 1, 2)  # a repeated DAG is reported by its first occurrence
  assert found.result == oracle.evaluate("algebra", 4, found.assignment, dags[found.dag_index], "GPT-4o-mini")
  assert found.evaluations < 3 * len(options) ** 4  # fewer evaluations than the brute force


def test_plan_search_keeps_to_the_inference_rules():
  world = default_world(seed=4).with_models(["Llama-3.1-8B", "GPT-4o-mini", "DeepSeek-V3.2"])
  oracle = Oracle(world, TASK, ROLES[:2], c_s=3000, c_f=100)
  dags = [[[0, 1], [0, 0]], [[0, 0], [0, 0]]]
  rules = oracle_search.PlanRules(max_skipped_roles=0, answer_roles=(True, True), proposers_may_skip=False)
  models = list(world.models)
  best = max(oracle.evaluate("algebra", 4, [[a, b], [c, d]], dag, "GPT-4o-mini").expected_reward
             for dag in dags for a, b, c, d in itertools.product(models, repeat=4))
  found = oracle_search.best_plan(oracle, "algebra", 4, dags, "GPT-4o-mini", proposers=1, rules=rules)
  assert all(m is not None for row in found.assignment for m in row)
  assert found.result.expected_reward == pytest.approx(best, abs=1e-4)
  free = oracle_search.best_plan(oracle, "algebra", 4, dags, "GPT-4o-mini", proposers=1)
  assert free.result.expected_reward > found.result.expected_reward  # here skipping calls pays
  assert not rules.allows([[None, None], ["GPT-4o-mini", "GPT-4o-mini"]])
  assert oracle_search.PlanRules(1, (True, False)).allows([["GPT-4o-mini", "GPT-4o-mini"], [None, None]])
  assert not oracle_search.PlanRules(1, (True, False)).allows([[None, None], ["GPT-4o-mini", "GPT-4o-mini"]])
