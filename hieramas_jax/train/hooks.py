"""Training-loop hooks: code that stage 1 and stage 2 call after each validation (curves, early stops, tests).

    def stop_at_3(event):
      return event.step >= 3  # True: save a checkpoint and stop, as a SIGTERM does

    stage1.train_selector(env, workdir, writer, hooks=[stop_at_3])

A hook gets a ``Validation`` and returns True to ask training to stop after this
step (the loop saves a checkpoint, then raises ``preemption.StopRequested``);
anything else continues. Every hook runs, in order, whatever the others return.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Validation:
  """One validation of a training loop.

  Attributes:
    stage: 'stage1' (the selector) or 'stage2' (the graph classifier).
    step: stage 1's steps or stage 2's epochs done.
    metrics: the row this step writes to metrics.jsonl (with the validation's figures).
    graphdef: the model's graphdef.
    params: its current parameters; the next update donates them, so copy what you keep.
  """

  stage: str
  step: int
  metrics: Mapping[str, float]
  graphdef: Any
  params: Any


Hook = Callable[[Validation], Any]


def call(hooks: Sequence[Hook], event: Validation) -> bool:
  """Calls every hook with ``event``; True when one of them asks to stop."""
  answers = [hook(event) for hook in hooks]  # a list, not any(): every hook runs
  # True or numpy's True (a hook returning a comparison); anything else, e.g. None, continues.
  return any(isinstance(answer, (bool, np.bool_)) and bool(answer) for answer in answers)
