"""The paper's cost-aware reward, written once for JAX arrays, numpy arrays and Python floats.

Reward of one graded output with cost c (USD):

    solved: max(exp(-c_s * c), SOLVED_FLOOR)        failed: max(-exp(c_f * c), FAILED_FLOOR)

Training (``rewards.output_reward``, jitted, ``xp=jax.numpy``) and the
simulator's oracle (``sim.reward_of``, Python floats, ``xp=SCALAR``) both call
:func:`cost_aware_reward`. ``solved`` may be a probability: the result is then
the expected reward at that cost. This module imports no JAX (the oracle is
host-side code).
"""

from __future__ import annotations

import math
import types
from typing import Any

import numpy as np

DEFAULT_C_S = 300.0  # c_s of the paper: how fast a solved output's reward decays with cost
DEFAULT_C_F = 300.0  # c_f of the paper: how fast a failed output's penalty grows with cost
SOLVED_FLOOR = 0.5
FAILED_FLOOR = -2.5

# Past this exponent the failed branch sits on its floor, so capping it changes no value and no dtype overflows.
_MAX_FAILED_EXPONENT = math.log(-FAILED_FLOOR) + 1.0

# The array namespace for Python floats: exact libm exp, no numpy scalars (the oracle calls this in tight loops).
SCALAR = types.SimpleNamespace(exp=math.exp, maximum=max, minimum=min)


def cost_aware_reward(solved: Any, cost: Any, c_s: float = DEFAULT_C_S, c_f: float = DEFAULT_C_F,
                      xp: Any = np) -> Any:
  """Reward of outputs with solve indicator (or probability) ``solved`` and cost ``cost`` in USD.

  Args:
    solved: 0/1 (or a probability) per output, as floats of ``xp``'s kind; booleans
      must be converted by the caller (``1 - True`` is not defined for every namespace).
    cost: USD per output, the same shape as ``solved`` (or broadcastable to it).
    c_s, c_f: the reward's cost sensitivities.
    xp: the namespace with ``exp``, ``maximum`` and ``minimum``: ``numpy``,
      ``jax.numpy`` or :data:`SCALAR` for Python floats.
  """
  good = xp.maximum(xp.exp(-c_s * cost), SOLVED_FLOOR)
  bad = xp.maximum(-xp.exp(xp.minimum(c_f * cost, _MAX_FAILED_EXPONENT)), FAILED_FLOOR)
  return solved * good + (1.0 - solved) * bad
