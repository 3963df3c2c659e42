"""Prompts of the baseline methods, and the majority vote.

Prompts quote candidate texts in ``[Name]``-headed chunks after the problem, the
format of the task's own prompts (the simulated pool reads candidates there).
"""

from __future__ import annotations

import collections
from typing import Sequence

from hieramas_jax.llm.base import Message
from hieramas_jax.tasks.base import Problem, Task

SYSTEM_PROMPT = "You are a careful expert problem solver."


def _chunks(items: Sequence[tuple[str, str]]) -> list[str]:
  return [f"[{name}]\n{text}" for name, text in items]


def _messages(parts: Sequence[str]) -> list[Message]:
  return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n\n".join(parts)}]


def plain_messages(task: Task, problem: Problem) -> list[Message]:
  """The problem and the task's answer instruction, nothing else."""
  return _messages([f"Problem:\n{problem.question}", task.answer_instruction])


def cot_messages(task: Task, problem: Problem) -> list[Message]:
  """Chain of thought: the problem, a request to reason step by step, the answer instruction."""
  return _messages([f"Problem:\n{problem.question}",
                    "Let's think step by step: work through the problem carefully, checking each step, "
                    "before stating the result.", task.answer_instruction])


def debate_messages(task: Task, problem: Problem, own_previous: str | None,
                    others: Sequence[tuple[str, str]]) -> list[Message]:
  """A debate round after the first: the other agents' previous answers and this agent's own."""
  parts = [f"Problem:\n{problem.question}"]
  if others:
    parts.append("These are the answers of the other agents from the previous round:")
    parts.extend(_chunks(others))
  if own_previous is not None:
    parts.append("This was your own previous answer:")
    parts.extend(_chunks([("Your previous answer", own_previous)]))
  parts.append("Use the other agents' reasoning as additional evidence, re-examine the problem and give an "
               "updated answer.")
  parts.append(task.answer_instruction)
  return _messages(parts)


def synthesis_messages(task: Task, problem: Problem, candidates: Sequence[tuple[str, str]]) -> list[Message]:
  """A synthesizer / leader / aggregator: reads the candidates and writes the best single answer."""
  parts = [f"Problem:\n{problem.question}"]
  if candidates:
    parts.append("Responses to synthesize:")
    parts.extend(_chunks(candidates))
    parts.append("Critically judge these responses (some may be wrong), keep what is right, and write the best "
                 "single response.")
  parts.append(task.answer_instruction)
  return _messages(parts)


def refine_messages(task: Task, problem: Problem, own_previous: str | None, leader: str | None) -> list[Message]:
  """An MLPO peer after the first round: refines its answer on the leader's output."""
  parts = [f"Problem:\n{problem.question}"]
  if leader is not None:
    parts.append("The team leader's current answer:")
    parts.extend(_chunks([("Leader", leader)]))
  if own_previous is not None:
    parts.append("Your previous answer:")
    parts.extend(_chunks([("Your previous answer", own_previous)]))
  parts.append("Reconsider the problem in the light of the leader's answer and give your refined answer.")
  parts.append(task.answer_instruction)
  return _messages(parts)


def layer_messages(task: Task, problem: Problem, previous_layer: Sequence[tuple[str, str]]) -> list[Message]:
  """A NeuroMAS node: reads every output of the previous layer (none in the first layer)."""
  if not previous_layer:
    return plain_messages(task, problem)
  parts = [f"Problem:\n{problem.question}", "Outputs of the previous layer:", *_chunks(previous_layer),
           "Use these outputs as input and write your own answer."]
  parts.append(task.answer_instruction)
  return _messages(parts)


def majority_vote(task: Task, texts: Sequence[str | None]) -> tuple[int | None, dict[str, int]]:
  """Index of a text that states the most frequent answer, and the votes per answer.

  Answers are the task's ``extract`` of each text, compared as strings; a tie
  goes to the answer given first. Texts without an answer do not vote; when none
  has one, the first text is returned (it will be graded as it is). None when
  every text is None.
  """
  answers = [task.extract(t) if t is not None else None for t in texts]
  votes: dict[str, int] = collections.Counter(a for a in answers if a is not None)
  if votes:
    first = {a: answers.index(a) for a in votes}
    best = max(votes, key=lambda a: (votes[a], -first[a]))
    return first[best], dict(votes)
  for i, t in enumerate(texts):
    if t is not None:
      return i, {}
  return None, {}
