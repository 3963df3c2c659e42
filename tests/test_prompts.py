"""The task prompts: the paper's instructions and answer formats, and the simulator reading them."""

from __future__ import annotations

import fractions
import random
import re

import pytest

from hieramas_jax import executor
from hieramas_jax.executor import Plan
from hieramas_jax.llm.sim import SimulatedBackend, default_world
from hieramas_jax.tasks import Problem, get_task
from hieramas_jax.tasks import math as math_task
from hieramas_jax.tasks import math_grading
from hieramas_jax.tasks.mmlu_redux import extract_letter, format_question

TASK_NAMES = ("math", "synthetic", "mmlu_redux", "humaneval")
MATH_PROBLEMS = (
    Problem("math/hand/0", "What is $\\frac{1}{2} + \\frac{1}{4}$? Express your answer as a common fraction.",
            "\\frac{3}{4}", subject="Prealgebra", level=1),
    Problem("math/hand/1", "Find the distance between the points $(0, 0)$ and $(2, 4)$.", "2\\sqrt{5}",
            subject="Algebra", level=2),
    Problem("math/hand/2", "For what values of $x$ is $x^2 - 5x + 4 < 0$? Give an interval.", "(1,4)",
            subject="Intermediate Algebra", level=3),
)
MMLU_PROBLEMS = tuple(
    Problem(f"mmlu_redux/hand/{i}", format_question(question, choices), answer, subject=subject,
            meta={"choices": choices})
    for i, (question, choices, answer, subject) in enumerate([
        ("Which organ produces insulin?", ["Liver", "Pancreas", "Kidney", "Spleen"], "B", "anatomy"),
        ("In which year did the Berlin Wall fall?", ["1961", "1975", "1989", "1991"], "C", "high_school_world_history"),
        ("What is 15% of 80?", ["10", "12", "15", "18"], "B", "elementary_mathematics"),
    ]))


def _task_and_problems(name: str):
  task = get_task(name)
  if name == "math":
    return task, list(MATH_PROBLEMS)
  if name == "mmlu_redux":
    return task, list(MMLU_PROBLEMS)
  if name == "humaneval":
    return task, task.load(limit=3)
  return task, task.load("test", n=8)  # enough for wrong answers to be quoted too


def _user(messages) -> str:
  return messages[-1]["content"]


def _system(messages) -> str:
  return messages[0]["content"]


def _rendered(task, problem, correct: bool, seed: int) -> str:
  return task.render_answer(problem, correct, random.Random(seed))


# ---------------------------------------------------------------------------- instructions of every prompt kind
@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_prompt_kind_carries_its_instructions(name):
  task, problems = _task_and_problems(name)
  problem = problems[0]
  other = task.roles[-1]
  for role in task.roles:
    seen = [(other.name, "an output of another role")]
    proposer = task.proposer_messages(problem, role, seen)
    synthesizer = task.synthesizer_messages(problem, role, ["first response", "second response"], seen)
    closing = task.answer_instruction if role.gives_answer else role.analysis_instruction or task.analysis_instruction
    for messages in (proposer, synthesizer):
      # The role speaks first in its system prompt, with its persona and the task's rules.
      assert _system(messages).startswith(f"You are the {role.name} of a team")
      assert role.description in _system(messages) and task.task_rules in _system(messages)
      user = _user(messages)
      assert user.startswith(f"Problem:\n{problem.question}")
      assert f"[{other.name}]\nan output of another role" in user
      assert user.endswith(closing)
      assert (task.answer_instruction in user) == role.gives_answer
    assert "worked on the problem independently" in _system(synthesizer)
    # The synthesizer sees its proposals numbered and a three-point checklist of its own role.
    user = _user(synthesizer)
    assert "[Candidate 1]\nfirst response" in user and "[Candidate 2]\nsecond response" in user
    assert len(role.synthesis_checklist) == 3
    for i, item in enumerate(role.synthesis_checklist):
      assert f"\n{i + 1}. {item}" in user
    # Without proposals the synthesizer does the role's work alone, with the proposer's prompt.
    assert task.synthesizer_messages(problem, role, [], seen) == proposer
  decision = task.decision_messages(problem, [(r.name, f"output of {r.name}") for r in task.roles])
  assert decision[0]["role"] == "system" and "top decision-maker" in _system(decision)
  assert task.task_rules in _system(decision)
  assert not any(r.name in _system(decision) for r in task.roles)  # the decision node is no role
  assert decision[-1]["role"] == "user" and _user(decision).startswith(f"Problem:\n{problem.question}")
  assert all(f"[{r.name}]\noutput of {r.name}" in _user(decision) for r in task.roles)
  assert _user(decision).endswith(task.decision_instruction + "\n\n" + task.answer_instruction)
  alone = task.decision_messages(problem, [])
  assert "No role of the team gave an output" in _user(alone) and _user(alone).endswith(task.answer_instruction)


@pytest.mark.parametrize("name", ["math", "synthetic"])
def test_math_prompts_ask_for_the_answer_line_without_units_or_drawing_code(name):
  task, problems = _task_and_problems(name)
  instruction = task.answer_instruction
  assert '"The answer is N"' in instruction and "last line" in instruction and "no units" in instruction
  assert "boxed" not in instruction
  assert "drawing code" in task.task_rules and "Asymptote" in task.task_rules
  personas = {r.name: r.description for r in task.roles}
  assert "letter" in personas["Mathematical Analyst"] and "substitute" in personas["Mathematical Analyst"]
  assert "step by step" in personas["Math Solver"]
  assert "logic" in personas["Inspector"] and "step by step" in personas["Inspector"]
  # The decision node's worked example comes first, as a user turn laid out like the real task and an
  # assistant turn that ends in the asked format.
  decision = task.decision_messages(problems[0], [("Math Solver", "work\nThe answer is 1")])
  assert [m["role"] for m in decision] == ["system", "user", "assistant", "user"]
  example_prompt, example_reply = decision[1]["content"], decision[2]["content"]
  assert example_prompt == task.decision_user_prompt(math_task.MATH_DECISION_EXAMPLE_QUESTION,
                                                     math_task.MATH_DECISION_EXAMPLE_OUTPUTS)
  assert example_reply.splitlines()[-1] == "The answer is 14.4"


def test_the_math_decision_example_is_a_real_disagreement_settled_right():
  task = get_task("math")
  stated = [math_grading.extract_answer(text) for _, text in math_task.MATH_DECISION_EXAMPLE_OUTPUTS]
  assert len(set(stated)) == 3  # every role reads the problem differently
  # The question's numbers: 25% off the original gives 18; 40% off the original is asked.
  original = fractions.Fraction(18) / fractions.Fraction(3, 4)
  right = str(float(original * fractions.Fraction(3, 5)))
  example = Problem("example", math_task.MATH_DECISION_EXAMPLE_QUESTION, right)
  assert task.grade(example, math_task.MATH_DECISION_EXAMPLE_REPLY)
  assert [task.grade(example, text) for _, text in math_task.MATH_DECISION_EXAMPLE_OUTPUTS] == [True, False, False]
  # The reply names each wrong reading before it decides.
  assert all(name in math_task.MATH_DECISION_EXAMPLE_REPLY for name, _ in math_task.MATH_DECISION_EXAMPLE_OUTPUTS)


def test_every_mmlu_prompt_demands_the_same_single_letter_format():
  task, problems = _task_and_problems("mmlu_redux")
  problem = problems[0]
  instruction = task.answer_instruction
  assert "first line" in instruction and "(A, B, C or D)" in instruction and "100 words" in instruction
  prompts = []
  for role in task.roles:
    assert role.gives_answer
    prompts.append(task.proposer_messages(problem, role, [("Critic", "B\nOption B is the best choice: why.")]))
    prompts.append(task.synthesizer_messages(problem, role, ["A\nshort reason", "B\nshort reason"], []))
  prompts.append(task.decision_messages(problem, [(r.name, "C\nshort reason") for r in task.roles]))
  for messages in prompts:
    text = "\n".join(m["content"] for m in messages)
    assert text.count(instruction) == 1
    # No other answer format anywhere (the paper's decision prompt also asked for "The answer is ...").
    assert not re.search(r"(?i)answer\s+is|\\boxed", text.replace(instruction, ""))
  expert = task.role("Knowledgeable Expert").description
  assert "entities" in expert and "encyclopedia" in expert
  assert "point by point" in task.role("Critic").description


def test_humaneval_prompts_split_code_roles_from_short_analyses():
  task, problems = _task_and_problems("humaneval")
  problem = problems[0]
  code_roles = {r.name for r in task.roles if r.gives_answer}
  assert code_roles == {"Programming Expert", "Bug Fixer"}
  assert "```python" in task.answer_instruction and "only" in task.answer_instruction
  assert "signature" in task.answer_instruction and "nothing outside" in task.answer_instruction
  for role in task.roles:
    for messages in (task.proposer_messages(problem, role, []),
                     task.synthesizer_messages(problem, role, ["x = 1", "x = 2"], [])):
      user = _user(messages).replace(problem.question, "")
      if role.gives_answer:
        assert user.endswith(task.answer_instruction)
      else:
        assert "50 words" in user and "```" not in user  # an analysis, never a code block
  decision = task.decision_messages(problem, [(r.name, "notes") for r in task.roles])
  assert "only with Python code" in _system(decision) and _user(decision).endswith(task.answer_instruction)


# ---------------------------------------------------------------------------- rendered answers
@pytest.mark.parametrize("name", TASK_NAMES)
def test_rendered_answers_take_the_format_the_prompts_ask_for(name):
  task, problems = _task_and_problems(name)
  for i, problem in enumerate(problems):
    for correct in (True, False):
      text = _rendered(task, problem, correct, i)
      if name in ("math", "synthetic"):
        assert text.splitlines()[-1].startswith("The answer is ") and "boxed" not in text
      elif name == "mmlu_redux":
        first = text.splitlines()[0]
        assert re.fullmatch(r"[A-D]", first) and extract_letter(text) == first
        assert len(text.split()) < 100
      else:
        assert text.startswith("```python\n") and text.rstrip().endswith("```") and text.count("```") == 2
  verdicts = task.grade_many(problems, [_rendered(task, p, True, 0) for p in problems])
  assert verdicts == [True] * len(problems)
  assert task.grade_many(problems, [_rendered(task, p, False, 0) for p in problems]) == [False] * len(problems)


# ---------------------------------------------------------------------------- the simulator reads the prompts
@pytest.mark.parametrize("name", TASK_NAMES)
def test_the_simulator_finds_the_problem_role_and_answers_in_every_prompt_kind(name):
  task, problems = _task_and_problems(name)
  backend = SimulatedBackend(default_world(), task, problems)
  problem = problems[1]
  right, wrong = _rendered(task, problem, True, 1), _rendered(task, problem, False, 2)
  # The last quoted output of every prompt is a right one: instructions after it that read as an answer
  # would turn it wrong.
  for role in task.roles:
    other = next(r for r in task.roles if r is not role)
    proposer = task.proposer_messages(problem, role, [(other.name, wrong), (other.name, right)])
    reading = backend.read(proposer)
    assert (reading.problem.uid, reading.role, reading.n_correct, reading.n_wrong) == (problem.uid, role.name, 1, 1)
    synthesizer = task.synthesizer_messages(problem, role, [wrong, right, right], [(other.name, right)])
    reading = backend.read(synthesizer)
    assert (reading.problem.uid, reading.role, reading.n_correct, reading.n_wrong) == (problem.uid, role.name, 3, 1)
  answers = len(task.roles)
  outputs = [(r.name, right if (answers - 1 - i) % 2 == 0 else wrong) for i, r in enumerate(task.roles)]
  reading = backend.read(task.decision_messages(problem, outputs))
  assert (reading.problem.uid, reading.role) == (problem.uid, None)
  # (The decision node's worked example, in its own turns, is not read.)
  assert (reading.n_correct, reading.n_wrong) == ((answers + 1) // 2, answers // 2)


class RecordingBackend:
  """The simulator, keeping every request and its reply."""

  def __init__(self, sim: SimulatedBackend):
    self.sim = sim
    self.calls: list[tuple[list, str]] = []

  def known_models(self):
    return self.sim.known_models()

  async def complete(self, model, messages, **kwargs):
    response = await self.sim.complete(model, messages, **kwargs)
    self.calls.append((list(messages), response.text))
    return response


@pytest.mark.parametrize("name", TASK_NAMES)
def test_end_to_end_run_on_the_simulator_reads_every_quoted_answer(name):
  task, problems = _task_and_problems(name)
  sim = SimulatedBackend(default_world(seed=3), task, problems)
  backend = RecordingBackend(sim)
  models = sorted(sim.known_models())
  roles = tuple(task.roles)
  n = len(roles)
  chain_and_more = [[1 if j == i + 1 or (i == 0 and j == n - 1) else 0 for j in range(n)] for i in range(n)]
  plans = [Plan(p, roles, [[models[(i + r) % len(models)], models[(i + r + 1) % len(models)],
                            models[(i + 2 * r) % len(models)]] for r in range(n)],
                chain_and_more, models[i % len(models)]) for i, p in enumerate(problems)]
  results = executor.execute(plans, backend, task)
  assert all(not r.errors and r.final_text is not None for r in results)
  assert len(backend.calls) == len(problems) * (3 * n + 1)
  texts = {text for _, text in backend.calls}
  by_uid = {p.uid: p for p in problems}
  verdicts = {}
  read_right = read_wrong = 0
  for messages, _ in backend.calls:
    reading = sim.read(messages)
    problem = by_uid[reading.problem.uid]
    assert problem.question in _user(messages)
    # Every earlier reply quoted in this prompt (a whole block under a header) is read, and graded as the
    # task grades it (replies differ only in filler before the answer: one grading per stated answer).
    quoted = {t: _user(messages).count(f"]\n{t}\n\n") for t in texts}
    quoted = {t: count for t, count in quoted.items() if count}
    for t in quoted:
      key = (problem.uid, task.extract(t))
      if key not in verdicts:
        verdicts[key] = task.grade(problem, t)
    right = sum(count for t, count in quoted.items() if verdicts[(problem.uid, task.extract(t))])
    wrong = sum(count for t, count in quoted.items() if not verdicts[(problem.uid, task.extract(t))])
    assert (reading.n_correct, reading.n_wrong) == (right, wrong)
    read_right, read_wrong = read_right + right, read_wrong + wrong
  assert read_right > 0 and read_wrong > 0  # the run quoted right and wrong answers alike
  # The decision of each query quoted every role's output.
  for result in results:
    decision = next(m for m, t in backend.calls if t == result.final_text)
    assert all(out in _user(decision) for out in result.role_outputs)
