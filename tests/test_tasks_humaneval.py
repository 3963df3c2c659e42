"""HumanEval / HumanEval+: code extraction, grading in the sandbox, output comparison."""

from __future__ import annotations

import random
import time

import pytest

from hieramas_jax import sandbox
from hieramas_jax.tasks import get_task
from hieramas_jax.tasks.humaneval import HumanEvalTask, build_program, extract_code, outputs_match

SAMPLE = [0, 2, 10, 22, 32, 33, 38, 53, 111, 163]  # includes helper-using (32, 38) and self-calling (33) tests


def truncated(problem) -> str:
  """The canonical solution with its last non-empty line removed, as a fenced answer."""
  body = problem.meta["canonical_solution"].rstrip().splitlines()
  while body and not body[-1].strip():
    body.pop()
  return "```python\n" + problem.meta["prompt"] + "\n".join(body[:-1]) + "\n```"


# ---------------------------------------------------------------------------- extraction
def test_extract_code_from_fences_and_bare_text():
  fenced = "Plan first.\n```python\ndef helper():\n  pass\n```\nThen:\n```python\ndef f(x):\n  return x\n```\nDone."
  assert extract_code(fenced, "f") == "def f(x):\n  return x\n"
  assert extract_code(fenced, "helper") == "def helper():\n  pass\n"
  assert extract_code("```\nimport math\ndef f(x):\n  return math.sqrt(x)\n```") .startswith("import math")
  assert extract_code("```py\ndef f():\n  return 1\n") == "def f():\n  return 1\n"  # unterminated fence
  bare = "Sure! Here it is:\nimport math\n\ndef f(x):\n  return x\n\nThis returns x unchanged."
  assert extract_code(bare, "f") == "import math\n\ndef f(x):\n  return x\n"
  assert extract_code("    return x + 1\n") == "    return x + 1\n"  # a body completion
  assert extract_code("") is None and extract_code("   ") is None


def test_extract_code_keeps_correct_answers_whole():
  # A body completion followed by a top-level helper: the helper is part of the answer.
  body_and_helper = "    return helper(x)\n\n\ndef helper(x):\n    return x + 1\n\nThat is the answer."
  assert extract_code(body_and_helper, "f") == "    return helper(x)\n\n\ndef helper(x):\n    return x + 1\n"
  # A column-0 import inside a string literal is not where the code starts.
  quoted = 'Here:\nHEADER = 1\ndef f():\n    return """\nimport os\nfrom x import y\n"""\n\nDone.'
  assert extract_code(quoted, "f") == 'def f():\n    return """\nimport os\nfrom x import y\n"""\n'
  body_with_string = '    s = """\nimport os\n"""\n    return s\n'
  assert extract_code(body_with_string) == body_with_string


def test_body_completion_with_helper_is_graded_passed():
  task = get_task("humaneval")
  problem = task.load()[0]  # has_close_elements
  answer = ("    return any(close(a, b, threshold) for i, a in enumerate(numbers) for b in numbers[i + 1:])\n\n\n"
            "def close(a, b, threshold):\n    return abs(a - b) < threshold\n")
  assert task.grade(problem, answer)


def test_build_program_for_full_functions_and_bodies():
  problem = HumanEvalTask().load(limit=1)[0]
  body = problem.meta["canonical_solution"]
  assert build_program(problem, body) == problem.meta["prompt"] + body
  full = problem.meta["prompt"] + body
  program = build_program(problem, full)
  assert program.startswith(problem.meta["prompt"].rstrip()) and program.endswith(full)


def test_outputs_match_like_evalplus():
  assert outputs_match([1.0, 2.0], [1.0, 2.0 + 1e-9])
  assert not outputs_match([1.0], [1.001])
  assert outputs_match(1.0, 1.0005, atol=1e-3) and not outputs_match(1.0, 1.01, atol=1e-3)
  assert outputs_match(float("nan"), float("nan"))
  assert not outputs_match([1, 2], (1, 2)) and outputs_match((1, [2]), (1, [2]))
  assert outputs_match({"a": 1}, {"a": 1}) and not outputs_match({"a": 1}, {"a": 2})
  assert outputs_match(sandbox.RaisedOutput("ValueError"), sandbox.RaisedOutput("TypeError"))
  assert not outputs_match(sandbox.RaisedOutput("ValueError"), None)
  assert outputs_match(sandbox.DigestOutput("ab", 9), sandbox.DigestOutput("ab", 9))
  assert not outputs_match(sandbox.DigestOutput("ab", 9), sandbox.DigestOutput("cd", 9))
  assert not outputs_match(True, "True")


# ---------------------------------------------------------------------------- HumanEval (bundled data)
def test_humaneval_loads_from_the_package():
  problems = HumanEvalTask().load()
  assert len(problems) == 164 and problems[0].uid == "HumanEval/0"
  assert all(p.subject == "code" and p.level == 0 and p.meta["entry_point"] in p.question for p in problems)


def test_sample_canonical_pass_and_truncated_fail():
  task = get_task("humaneval")
  problems = [task.load()[i] for i in SAMPLE]
  rng = random.Random(0)
  assert task.grade_many(problems, [task.render_answer(p, True, rng) for p in problems]) == [True] * len(SAMPLE)
  assert task.grade_many(problems, [truncated(p) for p in problems]) == [False] * len(SAMPLE)
  assert task.grade_many(problems, [task.render_answer(p, False, rng) for p in problems]) == [False] * len(SAMPLE)


def test_grading_accepts_body_completions_and_rejects_junk():
  task = get_task("humaneval")
  problem = task.load()[2]  # truncate_number
  assert task.grade(problem, problem.meta["canonical_solution"])  # as a bare body completion
  assert not task.grade(problem, "I do not know.")
  assert not task.grade(problem, "")
  cheat = "```python\nimport sys\ndef truncate_number(number):\n    return 0.0\nsys.exit(0)\n```"
  assert not task.grade(problem, cheat)


@pytest.mark.slow
def test_all_humaneval_canonical_pass_and_truncated_fail():
  """Acceptance: 164/164 canonical solutions pass, 164/164 with the last line removed fail."""
  task = get_task("humaneval")
  problems = task.load()
  start = time.perf_counter()
  passed = task.grade_many(problems, [task.render_answer(p, True, random.Random(0)) for p in problems])
  broken = task.grade_many(problems, [truncated(p) for p in problems])
  print(f"HumanEval: canonical {sum(passed)}/164 pass, truncated {sum(broken)}/164 pass, "
        f"{time.perf_counter() - start:.1f} s")
  assert sum(passed) == 164 and sum(broken) == 0


# ---------------------------------------------------------------------------- HumanEval+ (shared data)
def test_humaneval_plus_loads_inputs(shared_data):
  problems = HumanEvalTask(plus=True).load()
  assert len(problems) == 164
  assert all(p.meta["plus_input"] and p.meta["base_input"] for p in problems)
  assert {p.uid: p.meta["atol"] for p in problems if p.meta["atol"]} == {
      "HumanEval/2": 1e-6, "HumanEval/4": 1e-6, "HumanEval/32": 1e-4}


def test_humaneval_plus_sample(shared_data):
  task = get_task("humaneval_plus")
  problems = [task.load()[i] for i in (0, 2, 32, 53)]
  rng = random.Random(0)
  assert task.grade_many(problems, [task.render_answer(p, True, rng) for p in problems]) == [True] * 4
  assert task.grade_many(problems, [truncated(p) for p in problems]) == [False] * 4


def test_humaneval_plus_catches_what_the_base_tests_miss(shared_data):
  task = get_task("humaneval_plus")
  problem = task.load()[53]  # add(x, y): the base tests only use non-negative numbers
  sloppy = "```python\ndef add(x: int, y: int):\n    return abs(x) + abs(y)\n```"
  assert get_task("humaneval").grade(problem, sloppy)
  assert not task.grade(problem, sloppy)


OTHER_ROOT = """```python
def find_zero(xs: list):
    dxs = [xs[i] * i for i in range(1, len(xs))]
    def newton(x):
        for _ in range(1000):
            fx = poly(xs, x)
            if abs(fx) < 1e-5:
                break
            d = poly(dxs, x)
            if d == 0:
                break
            x = x - fx / d
        return x
    other = newton(7.0)  # often another root than the reference finds from 0
    return other if abs(poly(xs, other)) < 1e-6 else newton(0.0)
```"""


def test_find_zero_accepts_any_root(shared_data):
  task = get_task("humaneval_plus")
  problem = task.load()[32]
  result = task.run([problem], [OTHER_ROOT])[0]
  expected = task.reference_outputs([problem])[0]
  assert result.passed
  assert not all(outputs_match(e, g, 1e-4) for e, g in zip(expected, result.outputs))  # other roots
  assert task.grade(problem, OTHER_ROOT)


@pytest.mark.slow
def test_all_humaneval_plus_canonical_pass(shared_data):
  """Acceptance: canonical solutions on their base and plus inputs (count printed)."""
  task = get_task("humaneval_plus")
  problems = task.load()
  start = time.perf_counter()
  passed = task.grade_many(problems, [task.render_answer(p, True, random.Random(0)) for p in problems])
  print(f"HumanEval+: canonical {sum(passed)}/164 pass on base+plus inputs, {time.perf_counter() - start:.1f} s")
  assert sum(passed) == 164
