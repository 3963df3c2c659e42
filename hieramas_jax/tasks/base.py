"""The task interface: problems, role prompts, answer extraction and grading.

A task knows nothing of JAX or of LLM backends. The executor asks a task for the
messages of every call (proposer, synthesizer, decision node) and the trainer asks
it to grade texts. Simulated LLMs ask it to render an answer in the task's format.

Subclasses set ``name``, ``roles`` and ``answer_instruction`` and implement
``load``, ``extract``, ``grade`` and ``render_answer``; the prompt builders below
are a working default that subclasses may override.
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
  description: str
  # Planners and analysts give no answer of their own: their node reward is
  # undefined and training credits them with the system reward only.
  gives_answer: bool = True


class Task(abc.ABC):
  """Data, prompts and grader of one benchmark."""

  name: str = ""
  roles: tuple[RoleSpec, ...] = ()
  answer_instruction: str = ""  # the one output-format instruction of the task

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

  # ---- prompts (default implementation) ---------------------------------
  def system_prompt(self, role: RoleSpec) -> str:
    return f"You are the {role.name} of a team solving a problem together. {role.description}"

  def proposer_messages(
      self, problem: Problem, role: RoleSpec, predecessors: Sequence[tuple[str, str]]
  ) -> list[Message]:
    """One proposer call of ``role``; ``predecessors`` are (role name, output) pairs."""
    parts = [f"Problem:\n{problem.question}"]
    if predecessors:
      parts.append("Outputs of your teammates:")
      parts.extend(f"[{name}]\n{text}" for name, text in predecessors)
    parts.append(self.answer_instruction if role.gives_answer else
                 "Give your analysis for the team; you need not give a final answer.")
    return [{"role": "system", "content": self.system_prompt(role)},
            {"role": "user", "content": "\n\n".join(parts)}]

  def synthesizer_messages(
      self,
      problem: Problem,
      role: RoleSpec,
      proposals: Sequence[str],
      predecessors: Sequence[tuple[str, str]],
  ) -> list[Message]:
    """The synthesizer call of ``role``: reads its proposals, writes the role's output."""
    parts = [f"Problem:\n{problem.question}"]
    if predecessors:
      parts.append("Outputs of your teammates:")
      parts.extend(f"[{name}]\n{text}" for name, text in predecessors)
    if proposals:
      parts.append("Candidate responses for your role:")
      parts.extend(f"[Candidate {i + 1}]\n{text}" for i, text in enumerate(proposals))
      parts.append("Judge the candidates, keep what is right, and write the best single response.")
    parts.append(self.answer_instruction if role.gives_answer else
                 "Give your analysis for the team; you need not give a final answer.")
    return [{"role": "system", "content": self.system_prompt(role)},
            {"role": "user", "content": "\n\n".join(parts)}]

  def decision_messages(
      self, problem: Problem, role_outputs: Sequence[tuple[str, str]]
  ) -> list[Message]:
    """The decision node: reads every role's output and gives the final answer."""
    parts = [f"Problem:\n{problem.question}"]
    if role_outputs:
      parts.append("Outputs of the team:")
      parts.extend(f"[{name}]\n{text}" for name, text in role_outputs)
    parts.append(self.answer_instruction)
    system = ("You make the final decision for a team of experts. Weigh their outputs, "
              "check them against the problem, and give the final answer.")
    return [{"role": "system", "content": system},
            {"role": "user", "content": "\n\n".join(parts)}]
