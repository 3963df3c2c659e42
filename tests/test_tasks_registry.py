"""The task registry, roles, prompts and the uid-hash splitter."""

from __future__ import annotations

import dataclasses

import pytest

from hieramas_jax import tasks
from hieramas_jax.tasks import Problem


@pytest.mark.parametrize("name,roles,planners", [
    ("math", 3, set()),  # the Mathematical Analyst answers, as in the paper's code
    ("synthetic", 3, set()),
    ("mmlu_redux", 8, set()),
    ("humaneval", 5, {"Project Manager", "Algorithm Designer", "Test Analyst"}),
    ("humaneval_plus", 5, {"Project Manager", "Algorithm Designer", "Test Analyst"}),
])
def test_tasks_have_the_roles_of_the_paper(name, roles, planners):
  task = tasks.get_task(name)
  assert task.name == name
  assert len(task.roles) == roles
  assert {r.name for r in task.roles if not r.gives_answer} == planners
  assert all(r.description for r in task.roles)
  assert task.answer_instruction


def test_unknown_task_lists_the_known_ones():
  with pytest.raises(KeyError, match="math, mmlu_redux, humaneval, humaneval_plus, synthetic"):
    tasks.get_task("gsm8k")
  assert tasks.get_task("HumanEval-Plus").name == "humaneval_plus"


def test_prompts_carry_the_answer_instruction_only_for_answering_roles():
  task = tasks.get_task("synthetic")
  problem = task.load("test", n=1)[0]
  # MATH's roles all answer (as in the paper); a role that does not is the same role marked so.
  analyst = dataclasses.replace(task.role("Mathematical Analyst"), gives_answer=False)
  solver = task.role("Math Solver")
  solver_messages = task.proposer_messages(problem, solver, [("Mathematical Analyst", "Use the formula.")])
  assert solver_messages[0]["role"] == "system" and "Math Solver" in solver_messages[0]["content"]
  assert problem.question in solver_messages[1]["content"]
  assert "Use the formula." in solver_messages[1]["content"]
  assert task.answer_instruction in solver_messages[1]["content"]
  assert task.answer_instruction not in task.proposer_messages(problem, analyst, [])[1]["content"]
  synth = task.synthesizer_messages(problem, solver, ["\\boxed{1}", "\\boxed{2}"], [])
  assert "[Candidate 2]" in synth[1]["content"]
  decision = task.decision_messages(problem, [("Math Solver", "\\boxed{1}")])
  assert task.answer_instruction in decision[1]["content"]


def test_split_problems_is_a_stable_disjoint_partition():
  problems = [Problem(uid=f"p{i}", question=str(i), answer="1") for i in range(2000)]
  train, val, test = tasks.split_problems(problems, (0.8, 0.1, 0.1))
  assert len(train) + len(val) + len(test) == 2000
  assert not {p.uid for p in train} & {p.uid for p in test}
  assert 1500 < len(train) < 1700 and 120 < len(test) < 280
  again = tasks.split_problems(list(reversed(problems)), (0.8, 0.1, 0.1))
  assert {p.uid for p in again[2]} == {p.uid for p in test}
  fewer = tasks.split_problems(problems[:1000], (0.8, 0.1, 0.1))[2]
  assert {p.uid for p in fewer} <= {p.uid for p in test}
  assert tasks.split_problems(problems, (0.5, 0.5), salt="other")[0] != tasks.split_problems(problems, (0.5, 0.5))[0]
  with pytest.raises(ValueError):
    tasks.split_problems(problems, (0.5, 0.6))
