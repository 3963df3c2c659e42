"""Timing helper shared by the bench scripts (run them from the repository root)."""

from __future__ import annotations

import time


def best_time(fn, repeats: int) -> float:
  """Best wall time of ``fn`` (which must block) over ``repeats`` runs after one warm-up."""
  fn()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def single_call_times(fn, calls: int, idle_s: float = 0.0) -> list[float]:
  """Seconds of ``calls`` single calls of ``fn`` (which must block), each after ``idle_s`` of sleep if given."""
  times = []
  for _ in range(calls):
    if idle_s:
      time.sleep(idle_s)
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times
