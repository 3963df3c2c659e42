"""The local backend's request queue: calls to one model collected into batched generations.

A worker thread per loaded model takes the oldest waiting call and the waiting calls
of the same temperature and top_p (up to ``max_batch``, within the model's context),
runs them as one generation and cuts each row to its own ``max_tokens`` and stop
strings with exact token counts. JAX-free: the generate function is injected.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
  from hieramas_jax.lm.backend import GenerationRequest, LocalModel

@dataclasses.dataclass(frozen=True)
class Completion:
  """What generation gave one call, cut to its own limits."""

  text: str
  prompt_tokens: int
  completion_tokens: int
  finish_reason: str


@dataclasses.dataclass
class Pending:
  prompt: list[int]
  max_new_tokens: int
  request: GenerationRequest
  seed: int
  future: concurrent.futures.Future


GenerateFn = Callable[..., Any]


@dataclasses.dataclass
class BatchStats:
  """How calls were grouped into generations (one per loaded model)."""

  generations: int = 0  # calls of the generate function
  requests: int = 0  # calls answered through them
  largest_batch: int = 0


class Batcher:
  """One loaded model's request queue and the worker thread that runs it in batches.

  A batch starts with the oldest waiting call and takes the waiting calls of the
  same temperature and top_p, in arrival order, up to ``max_batch``; the worker
  waits up to ``wait_s`` after picking up the first call for more to arrive.
  """

  def __init__(self, model: LocalModel, generate_fn: GenerateFn, *, max_batch: int, wait_s: float):
    self.model = model
    self.generate_fn = generate_fn
    self.max_batch = max_batch
    self.wait_s = wait_s
    self.stats = BatchStats()
    self._queue: list[Pending] = []
    self._cond = threading.Condition()
    self._thread: threading.Thread | None = None
    self._closed = False

  def submit(self, pending: Pending) -> None:
    with self._cond:
      self._closed = False  # usable again after close(), like the HTTP backends
      if self._thread is None or not self._thread.is_alive():
        self._thread = threading.Thread(target=self._work, name="local-llm-batcher", daemon=True)
        self._thread.start()
      self._queue.append(pending)
      self._cond.notify_all()

  def close(self, timeout_s: float = 30.0) -> None:
    """Stops the worker after the batch it runs; calls still queued fail with an error."""
    with self._cond:
      self._closed = True
      queued, self._queue = self._queue, []
      self._cond.notify_all()
      thread = self._thread
    for pending in queued:
      if pending.future.set_running_or_notify_cancel():
        pending.future.set_exception(RuntimeError("the local backend was closed before this call ran"))
    if thread is not None and thread is not threading.current_thread():
      thread.join(timeout_s)

  def _group(self, pending: Pending) -> tuple[float, float]:
    return pending.request.temperature, pending.request.top_p

  def _take_batch(self) -> list[Pending] | None:
    """Waits for a batch; None when closed."""
    with self._cond:
      while not self._queue and not self._closed:
        self._cond.wait()
      if self._closed:
        return None
      group = self._group(self._queue[0])
      deadline = time.monotonic() + self.wait_s
      while not self._closed:
        if sum(self._group(p) == group for p in self._queue) >= self.max_batch:
          break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
          break
        self._cond.wait(remaining)
      if self._closed:
        return None
      batch, rest = [], []
      context = int(self.model.config.max_position_embeddings)
      longest, budget = 0, 0
      for p in self._queue:
        # The batch runs max(budget) steps past max(prompt): a call that would push it past the context waits.
        fits = max(longest, len(p.prompt)) + max(budget, p.max_new_tokens) <= context
        if self._group(p) == group and len(batch) < self.max_batch and (fits or not batch):
          batch.append(p)
          longest, budget = max(longest, len(p.prompt)), max(budget, p.max_new_tokens)
        else:
          rest.append(p)
      self._queue = rest
    return [p for p in batch if p.future.set_running_or_notify_cancel()]  # cancelled calls drop out

  def _work(self) -> None:
    while True:
      batch = self._take_batch()
      if batch is None:
        return
      if batch:
        self._run(batch)

  def _run(self, batch: list[Pending]) -> None:
    first = batch[0].request
    try:
      result = self.generate_fn(
          self.model, [p.prompt for p in batch], seeds=[p.seed for p in batch],
          max_new_tokens=max(p.max_new_tokens for p in batch), temperature=first.temperature, top_p=first.top_p,
          stop_ids=tuple(self.model.tokenizer.eos_ids))
      self.stats.generations += 1
      self.stats.requests += len(batch)
      self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
      for i, pending in enumerate(batch):
        pending.future.set_result(
            completion(self.model.tokenizer, pending, list(result.tokens[i]), result.finish_reasons[i]))
    except Exception as e:  # pylint: disable=broad-except  # every caller gets the failure as its answer
      for pending in batch:
        if not pending.future.done():
          pending.future.set_exception(e)


def completion(tokenizer: Any, pending: Pending, tokens: list[int], finish_reason: str) -> Completion:
  """One row of a batch cut to its own ``max_new_tokens`` and stop strings, with exact token counts."""
  limit = pending.max_new_tokens
  # The end-of-sequence token takes a step of the budget: with as many tokens as the budget, the row's
  # own run would have stopped for length before it.
  if len(tokens) >= limit:
    tokens, finish_reason = tokens[:limit], "length"
  ended_by_eos = finish_reason == "stop"
  text = tokenizer.decode(tokens)
  stop_strings = pending.request.stop
  hits = [(text.find(s), s) for s in stop_strings if s in text]
  if hits:
    at, _ = min(hits)
    text = text[:at]
    # The tokens it took to complete the first stop string are counted; the rest were never asked for.
    used = next(k for k in range(1, len(tokens) + 1) if any(s in tokenizer.decode(tokens[:k]) for s in stop_strings))
    return Completion(text, len(pending.prompt), used, "stop")
  return Completion(text, len(pending.prompt), len(tokens) + (1 if ended_by_eos else 0),
                    "stop" if ended_by_eos else "length")
