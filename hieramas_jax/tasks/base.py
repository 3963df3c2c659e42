"""The task interface: problems, role prompts, answer extraction and grading.

A task knows nothing of JAX or of LLM backends. The executor asks a task for the
messages of every call (proposer, synthesizer, decision node) and the trainer asks
it to grade texts. Simulated LLMs ask it to render an answer in the task's format.

Subclasses set ``name``, ``roles`` and ``answer_instruction`` and implement
``load``, ``extract``, ``grade`` and ``render_answer``. The prompt builders
below lay out every call the same way for all tasks; a task fills them with its
text (personas, rules, synthesis checklists, the decision node's instruction and
an optional worked example).

Layout of the user message (the simulator relies on it: the question starts a
line, every quoted output sits under a ``[Header]`` line of its own, and the
text after the last quoted output holds no answer except ``answer_instruction``,
which it strips):

    Problem:
    <question>

    Outputs of other roles of your team (...):      <- predecessors, if any
    [Role name]
    <output>

    Several <role>s answered independently (...):  <- synthesizer only
    [Candidate 1]
    <proposal>

    <checklist / instruction>
    <answer_instruction>                              <- roles that give an answer
"""

from __future__ import annotations

import abc
import dataclasses
import random
from typing import Any, Mapping, Sequence

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


@dataclasses.dataclass(frozen=True)
class Problem:
  """One query of a task with its reference answer."""

  uid: str
  question: str  # the text every LLM call of this query sees
  answer: str  # reference answer (for code tasks: the canonical solution)
  subject: str = ""
  level: int = 0  # difficulty 1..5; 0 when unknown
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RoleSpec:
  """A functional role (a supernode of P proposers and one synthesizer)."""

  name: str
  description: str  # the persona: what the role does and how (system prompts; also embedded for the selector)
  # Planners and analysts give no answer of their own: their node reward is
  # undefined and training credits them with the system reward only.
  gives_answer: bool = True
  # What the role's synthesizer checks when it merges its proposers' responses
  # (a short numbered list; empty: the task's generic checklist).
  synthesis_checklist: tuple[str, ...] = ()
  # What a role that gives no answer writes instead (empty: the task's default).
  analysis_instruction: str = ""


class Task(abc.ABC):
  """Data, prompts and grader of one benchmark."""

  name: str = ""
  roles: tuple[RoleSpec, ...] = ()
  # The one output-format instruction of the task, word for word the same in
  # every prompt that asks for an answer (the simulator strips it by its text).
  answer_instruction: str = ""
  # Rules every call of the task obeys (the end of every system prompt).
  task_rules: str = ""
  # What a role that gives no answer writes, unless the role says otherwise.
  analysis_instruction: str = "Give your analysis for the team; you need not state a final result."
  # The synthesizer's checklist for roles that give none of their own.
  synthesis_checklist: tuple[str, ...] = (
      "Check each response against the problem, step by step.",
      "Where the responses disagree, find out which reasoning holds and why.",
      "Keep what is right, correct what is wrong, and write one response.",
  )
  # The decision node: its persona (system prompt) and what it is asked to do.
  decision_persona: str = ("You are the top decision-maker of a team: you weigh the outputs of its roles, check them "
                           "against the problem, and give the final result.")
  decision_instruction: str = ("Compare the outputs of the team step by step, find their errors, decide which "
                               "reasoning holds, and give the reason for your decision.")

  # ---- data -------------------------------------------------------------
  @abc.abstractmethod
  def load(self, split: str = "test", **kwargs) -> list[Problem]:
    """Returns the problems of a split."""

  # ---- answers ----------------------------------------------------------
  @abc.abstractmethod
  def extract(self, text: str) -> str | None:
    """The answer stated in an LLM output, or None when there is none."""

  @abc.abstractmethod
  def grade(self, problem: Problem, text: str) -> bool:
    """Whether an LLM output solves the problem (deterministic, no LLM judge)."""

  def grade_many(self, problems: Sequence[Problem], texts: Sequence[str]) -> list[bool]:
    """Grades many outputs; tasks with expensive graders parallelise this."""
    if len(problems) != len(texts):
      raise ValueError(f"grade_many got {len(problems)} problems but {len(texts)} texts; pass one text per problem")
    return [self.grade(p, t) for p, t in zip(problems, texts)]

  @abc.abstractmethod
  def render_answer(self, problem: Problem, correct: bool, rng: random.Random) -> str:
    """A short answer text in the task's output format (used by simulated LLMs).

    ``correct=True`` must give a text that ``grade`` accepts, ``False`` one it rejects.
    """

  # ---- roles ------------------------------------------------------------
  def role(self, name: str) -> RoleSpec:
    for r in self.roles:
      if r.name == name:
        return r
    known = ", ".join(r.name for r in self.roles)
    raise KeyError(f"task {self.name!r} has no role {name!r}; its roles are: {known}")

  # ---- prompts ----------------------------------------------------------
  def system_prompt(self, role: RoleSpec) -> str:
    """A proposer's system prompt: the role's name first (who speaks), its persona, the task's rules."""
    return _join(f"You are the {role.name} of a team that solves problems together.", role.description,
                 self.task_rules)

  def synthesizer_system_prompt(self, role: RoleSpec) -> str:
    """The synthesizer's system prompt: the role's persona and the job of merging its proposers' responses."""
    return _join(f"You are the {role.name} of a team that solves problems together.", role.description,
                 f"Several {role.name}s have worked on the problem independently. You judge their responses "
                 "step by step, give reasons for what you keep and what you reject, and write the single "
                 f"response of the {role.name} role.", self.task_rules)

  def decision_system_prompt(self) -> str:
    """The decision node's system prompt (it names no role: the decision node is none of them)."""
    return _join(self.decision_persona, self.task_rules)

  def decision_example(self) -> list[Message]:
    """A worked example (user and assistant turns) shown to the decision node first; none by default."""
    return []

  def closing_instruction(self, role: RoleSpec) -> str:
    """The last paragraph of a role's prompt: the answer format, or what a role without an answer writes."""
    if role.gives_answer:
      return self.answer_instruction
    return role.analysis_instruction or self.analysis_instruction

  def _problem_and_predecessors(self, problem: Problem, predecessors: Sequence[tuple[str, str]]) -> list[str]:
    parts = [f"Problem:\n{problem.question}"]
    if predecessors:
      parts.append("Outputs of other roles of your team (use them as advice: check them critically and do not "
                   "copy their reasoning):")
      parts.extend(f"[{name}]\n{text}" for name, text in predecessors)
    return parts

  def proposer_messages(
      self, problem: Problem, role: RoleSpec, predecessors: Sequence[tuple[str, str]]
  ) -> list[Message]:
    """One proposer call of ``role``; ``predecessors`` are (role name, output) pairs."""
    parts = self._problem_and_predecessors(problem, predecessors)
    parts.append(self.closing_instruction(role))
    return [{"role": "system", "content": self.system_prompt(role)},
            {"role": "user", "content": "\n\n".join(p for p in parts if p)}]

  def synthesizer_messages(
      self,
      problem: Problem,
      role: RoleSpec,
      proposals: Sequence[str],
      predecessors: Sequence[tuple[str, str]],
  ) -> list[Message]:
    """The synthesizer call of ``role``: reads its proposals, writes the role's output.

    With no proposals (all skipped or failed) the synthesizer does the role's work
    alone, with the proposer's prompt.
    """
    if not proposals:
      return self.proposer_messages(problem, role, predecessors)
    parts = self._problem_and_predecessors(problem, predecessors)
    parts.append(f"Several {role.name}s answered independently; their responses follow.")
    parts.extend(f"[Candidate {i + 1}]\n{text}" for i, text in enumerate(proposals))
    checklist = role.synthesis_checklist or self.synthesis_checklist
    parts.append("\n".join([f"Your task as the {role.name}:"] +
                           [f"{i + 1}. {item}" for i, item in enumerate(checklist)]))
    parts.append(self.closing_instruction(role))
    return [{"role": "system", "content": self.synthesizer_system_prompt(role)},
            {"role": "user", "content": "\n\n".join(p for p in parts if p)}]

  def decision_messages(
      self, problem: Problem, role_outputs: Sequence[tuple[str, str]]
  ) -> list[Message]:
    """The decision node: reads every role's output and gives the final answer."""
    return ([{"role": "system", "content": self.decision_system_prompt()}] + self.decision_example()
            + [{"role": "user", "content": self.decision_user_prompt(problem.question, role_outputs)}])

  def decision_user_prompt(self, question: str, role_outputs: Sequence[tuple[str, str]]) -> str:
    """The decision node's user message for ``question`` (also used to write the worked example)."""
    parts = [f"Problem:\n{question}"]
    if role_outputs:
      parts.append("Outputs of the roles of your team:")
      parts.extend(f"[{name}]\n{text}" for name, text in role_outputs)
      parts.append(self.decision_instruction)
    else:
      parts.append("No role of the team gave an output; solve the problem yourself.")
    parts.append(self.answer_instruction)
    return "\n\n".join(p for p in parts if p)


def _join(*sentences: str) -> str:
  return " ".join(s.strip() for s in sentences if s and s.strip())
