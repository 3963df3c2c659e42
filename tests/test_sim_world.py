"""The anchored simulated world: published single-call scores, shared wrong answers, exact oracle."""

import math

import numpy as np
import pytest

from hieramas_jax import baselines, executor, tasks
from hieramas_jax.executor import Plan
from hieramas_jax.llm import sim, sim_facts
from hieramas_jax.llm.pool import PAPER_POOL, ModelSpec
from hieramas_jax.llm.sim_task import ArithmeticTask
from hieramas_jax.tasks.base import Problem

SYNTHETIC = tasks.get_task("synthetic")


def test_facts_table_covers_the_pool_with_a_source_each():
  for spec in PAPER_POOL:
    for benchmark in sim_facts.BENCHMARKS:
      fact = sim_facts.fact(spec.name, benchmark)
      assert 0 < fact.score < 100 and fact.source and fact.measured_on
      if fact.derived:  # a derived figure says that none was published and what stands in for it
        assert fact.derived.startswith("no ")
  with pytest.raises(KeyError, match="Add a Fact"):
    sim_facts.fact("Mystery-7B", "math")
  assert sim_facts.benchmark_of("synthetic") == "math"
  with pytest.raises(KeyError, match="benchmark="):
    sim_facts.benchmark_of("chess")


def _oracle_single_call(world, model, mix):
  """A model's accuracy on a mix through Oracle.evaluate: every role dropped, the decision node alone."""
  oracle = sim.Oracle(world, ArithmeticTask(), ArithmeticTask().roles)
  skip_all = [[None, None, None]] * 3
  total = sum(mix.values())
  return sum(weight / total * oracle.evaluate(subject, level, skip_all, np.zeros((3, 3)), model).solve_rate
             for (subject, level), weight in mix.items())


@pytest.mark.parametrize("benchmark", sim_facts.BENCHMARKS)
def test_single_call_accuracies_are_the_published_figures(benchmark):
  """Acceptance: within 0.03 of each published figure, by the oracle over the benchmark's test mix."""
  world = sim.anchored_world(benchmark)
  mix = sim_facts.BENCHMARK_MIX[benchmark]
  for model in world.models:
    published = sim_facts.fact(model, benchmark).score / 100.0
    accuracy = _oracle_single_call(world, model, mix)
    assert abs(accuracy - published) < 0.03, (model, accuracy, published)
    assert accuracy == pytest.approx(sim.mixture_single_call(world, model, mix), abs=1e-9)


def test_calibration_follows_the_problems_given():
  problems = SYNTHETIC.load("train", n=200)
  world = sim.anchored_world("synthetic", problems=problems, seed=4)
  mix = {}
  for p in problems:
    mix[(p.subject, p.level)] = mix.get((p.subject, p.level), 0) + 1
  assert _oracle_single_call(world, "GPT-4o-mini", mix) == pytest.approx(0.702, abs=1e-4)
  # Harder levels are harder for every model, and the published order holds.
  p = world.p_correct
  assert p("GPT-4o-mini", "algebra", 1, 0, 0) > p("GPT-4o-mini", "algebra", 5, 0, 0)
  assert sim.mixture_single_call(world, "GPT-5-mini", mix) > sim.mixture_single_call(world, "Llama-3.1-8B", mix)


def test_self_consistency_gain_of_a_mid_model_is_moderate():
  """Acceptance: 5-sample majority voting of GPT-4o-mini on MATH gains between 0.03 and 0.15 (exact)."""
  world = sim.anchored_world("math")
  oracle = sim.Oracle(world, ArithmeticTask(), ArithmeticTask().roles)
  mix = sim_facts.BENCHMARK_MIX["math"]
  total = sum(mix.values())
  single = sum(w / total * oracle.single_call(s, lv, "GPT-4o-mini") for (s, lv), w in mix.items())
  voted = sum(w / total * oracle.self_consistency(s, lv, "GPT-4o-mini", samples=5) for (s, lv), w in mix.items())
  assert single == pytest.approx(0.702, abs=1e-4)
  assert 0.03 <= voted - single <= 0.15, (single, voted)
  # Independent wrong answers (every wrong answer its own, no problem hardness) vote far better.
  independent = sim.AnswerModel(hardness=((0.0, 1.0),), profiles=(((0.0, 0.0, 1.0), 1.0),))
  flat = sim.anchored_world("math", hardness_sd=0.0)
  flat = sim.SimWorld(models=flat.models, skill=flat.skill, answers=independent)
  flat_oracle = sim.Oracle(flat, ArithmeticTask(), ArithmeticTask().roles)
  flat_gain = sum(w / total * (flat_oracle.self_consistency(s, lv, "GPT-4o-mini") -
                               flat_oracle.single_call(s, lv, "GPT-4o-mini")) for (s, lv), w in mix.items())
  assert flat_gain > voted - single + 0.05


def test_majority_vote_formula_on_small_cases():
  # Two samples, right with p, one shared wrong value with 1 - p: right wins 2-0, ties 1-1 half the time.
  p = 0.7
  assert sim.oracle._majority_right([p, 1 - p, 0.0], 2) == pytest.approx(p * p + 2 * p * (1 - p) / 2)
  # Three samples, wrong answers all one's own: right wins with >= 1 vote unless alone in a 3-way tie.
  expected = p**3 + 3 * p**2 * (1 - p) + 3 * p * (1 - p)**2 / 3
  assert sim.oracle._majority_right([p, 0.0, 1 - p], 3) == pytest.approx(expected)


def test_wrong_answers_are_shared_distractors():
  task = ArithmeticTask()
  problems = task.load("test", n=1, subjects=("multiplication",), levels=(5,))
  world = sim.anchored_world("arithmetic", problems=problems, seed=2)
  backend = sim.SimulatedBackend(world, task, problems)
  problem = problems[0]
  distractors = {a for _, a in backend.distractors(problem)}
  assert len(distractors) == 2 and problem.answer not in distractors
  messages = baselines.plain_messages(task, problem)
  answers = [task.extract(backend.answer(m, messages, i).text) for m in ("Llama-3.1-8B", "GPT-4o-mini")
             for i in range(300)]
  wrong = [a for a in answers if a != problem.answer]
  shared = sum(a in distractors for a in wrong)
  own = [a for a in wrong if a not in distractors]
  assert len(set(own)) == len(own)  # an answer of one's own is never repeated
  latent = world.answers.latent_of(problem.uid)
  own_share = latent.weights[-1]
  assert abs(shared / len(wrong) - (1 - own_share)) < 4 * math.sqrt(own_share * (1 - own_share) / len(wrong)) + 1e-9
  # A model that reads a distractor and errs tends to repeat it.
  d1 = world.value_distribution("GPT-4o-mini", problem.subject, problem.level, (0, 2, 0, 0), None, latent)
  d0 = world.value_distribution("GPT-4o-mini", problem.subject, problem.level, (0, 0, 0, 0), None, latent)
  assert d1[1] / (1 - d1[0]) > d0[1] / (1 - d0[0])


def test_multiple_choice_wrong_answers_are_the_three_other_options():
  task = tasks.get_task("mmlu_redux")
  problem = Problem("mmlu/anatomy/0", "Which bone is in the arm?\n(A) femur\n(B) humerus\n(C) tibia\n(D) fibula",
                    "B", subject="anatomy", level=0, meta={"choices": ["femur", "humerus", "tibia", "fibula"]})
  world = sim.anchored_world("mmlu_redux", problems=[problem])
  backend = sim.SimulatedBackend(world, task, [problem])
  assert sorted(a for _, a in backend.distractors(problem)) == ["A", "C", "D"]
  assert world.answers.num_distractors == 3 and all(w[-1] == 0 for w, _ in world.answers.profiles)


def test_oracle_matches_the_text_simulator_in_the_anchored_world():
  """Sampled solve rates through the real executor and grader vs the oracle's exact values.

  Tolerance: 4 standard errors of a 1200-sample proportion; costs within 2%.
  """
  n = 1200
  problems = SYNTHETIC.load("train", n=n, subjects=("algebra",), levels=(4,))
  world = sim.anchored_world("synthetic", problems=problems, seed=3)
  backend = sim.SimulatedBackend(world, SYNTHETIC, problems)
  roles = SYNTHETIC.roles
  assignment = [["Llama-3.1-8B", "Qwen3-8B", "GPT-4o-mini"], [None, "Gemma-3-27B", "Llama-3.1-8B"],
                ["Qwen3-8B", None, "GPT-4o-mini"]]
  adjacency = [[0, 1, 1], [0, 0, 1], [0, 0, 0]]
  plans = [Plan(p, roles, assignment, adjacency, "Llama-3.1-8B") for p in problems]
  results = executor.execute(plans, backend, SYNTHETIC)
  oracle = sim.Oracle(world, SYNTHETIC, roles)
  exact = oracle.evaluate("algebra", 4, assignment, adjacency, "Llama-3.1-8B", question=problems[0].question)
  solved = np.mean([SYNTHETIC.grade(p, r.final_text) for p, r in zip(problems, results)])
  role_rates = [np.mean([SYNTHETIC.grade(p, r.role_outputs[i]) for p, r in zip(problems, results)])
                for i in range(3)]
  for empirical, rate in [(solved, exact.solve_rate), *zip(role_rates, exact.role_solve_rates)]:
    tolerance = 4 * math.sqrt(rate * (1 - rate) / n)
    assert abs(empirical - rate) < tolerance, (empirical, rate, tolerance)
  assert np.mean([r.cost_usd for r in results]) == pytest.approx(exact.expected_cost, rel=0.02)
  # Per problem: the oracle at each problem's own traits, averaged, is closer still.
  per_problem = np.mean([oracle.evaluate("algebra", 4, assignment, adjacency, "Llama-3.1-8B", uid=p.uid).solve_rate
                         for p in problems[:300]])
  assert abs(per_problem - exact.solve_rate) < 0.08


def test_self_consistency_matches_the_sampled_baseline():
  """baselines self_consistency through the simulator vs the oracle's exact vote, per problem."""
  problems = SYNTHETIC.load("train", n=1000)
  world = sim.anchored_world("synthetic", problems=problems, seed=1)
  backend = sim.SimulatedBackend(world, SYNTHETIC, problems)
  oracle = sim.Oracle(world, SYNTHETIC, SYNTHETIC.roles)
  outcomes = baselines.run("self_consistency", problems, backend, SYNTHETIC, model="Llama-3.1-8B", samples=5)
  sampled = np.mean([SYNTHETIC.grade(p, o.final_text) for p, o in zip(problems, outcomes)])
  exact = np.mean([oracle.self_consistency(p.subject, p.level, "Llama-3.1-8B", uid=p.uid) for p in problems])
  assert abs(sampled - exact) < 4 * math.sqrt(exact * (1 - exact) / len(problems)), (sampled, exact)


def test_make_world_selects_and_explains():
  assert sim.make_world("invented", seed=1).answers is None
  assert sim.make_world("anchored", task="synthetic", seed=1).answers is not None
  with pytest.raises(ValueError, match="choose one of"):
    sim.make_world("imaginary")
  with pytest.raises(ValueError, match="task name"):
    sim.make_world("anchored")
  with pytest.raises(KeyError, match="Mystery-7B"):
    sim.anchored_world("math", pool=[*PAPER_POOL, ModelSpec("Mystery-7B", price_in_per_m=0.1, price_out_per_m=0.1)])


def test_environment_builds_the_configured_world(tmp_path):
  from hieramas_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from hieramas_jax.train import environment  # pylint: disable=g-import-not-at-top

  config = config_lib.base_config("math", "smoke")
  assert config.llm.sim_world == "invented"
  config.llm.sim_world = "anchored"
  problems = SYNTHETIC.load("train", n=50)
  specs = environment.pool_specs(config)
  backend = environment.make_backend(config, specs, SYNTHETIC, problems, tmp_path)
  simulator = getattr(backend, "backend", backend)  # under the response cache when one is configured
  assert isinstance(simulator, sim.SimulatedBackend) and simulator.world.answers is not None
  assert sim.mixture_single_call(simulator.world, "GPT-4o-mini", sim.world._mix_of(problems)) == pytest.approx(0.702,
                                                                                                         abs=1e-4)
