"""Several processes, one run: JAX's multi-controller runtime and the few collectives HieraMAS needs.

One process per host. ``initialize`` starts ``jax.distributed`` from explicit
settings (coordinator address, process count, process id) or from what JAX
detects (SLURM, TPU pods, Kubernetes, Open MPI); without either the run stays
one process and every function here is a no-op that returns the one-process
answer, so the training code calls them unconditionally.

What the processes share:
  * host objects (graded query results, labels, exceptions) through the
    coordinator's key-value store: ``gather_objects``, ``broadcast_object``,
    ``run_shares`` (each process handles its contiguous share of a list and
    every process gets the whole list back, in order);
  * arrays through XLA collectives over a mesh of every device of every
    process: ``data_parallel`` runs a jitted update on a batch sharded over all
    devices with the parameters replicated, so XLA averages the gradients
    (gloo on CPU, NCCL on GPU, ICI on TPU).

A process that dies (a kill, a crashed host) stops the others: a watchdog thread
polls the coordinator's live-node list and ends this process with one line
naming the lost process, instead of waiting for a collective that never comes.
The coordinator's own death ends the others from inside XLA ("Terminating
process because the JAX distributed service detected fatal errors").
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import pickle
import sys
import threading
import time
from typing import Any, Callable, Sequence


MODES = ("auto", "on", "off")
_KEY_PREFIX = "hieramas"
_WAIT_MS = 7 * 24 * 3600 * 1000  # a peer may spend days on its share of LLM calls; a dead one is the watchdog's


class DistributedError(RuntimeError):
  """A multi-process setup that cannot work; the message names the setting to change."""


class CollectiveMismatchError(DistributedError):
  """Processes of one run reached different collectives (one skipped or added a step)."""


class PeerLostError(RuntimeError):
  """Another process of the run stopped (or failed) before this one reached the same point."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """How this process joins a run (the launchers' --distributed, --coordinator_address, ... flags)."""

  mode: str = "auto"  # auto: explicit settings, else a detected cluster, else one process; on: must join; off: never
  coordinator_address: str | None = None  # host:port of process 0
  num_processes: int | None = None
  process_id: int | None = None
  heartbeat_timeout_s: int = 60  # a silent process counts as dead after this long
  initialization_timeout_s: int = 300

  def explicit(self) -> bool:
    return any(v is not None for v in (self.coordinator_address, self.num_processes, self.process_id))

  def check(self) -> None:
    if self.mode not in MODES:
      raise DistributedError(f"--distributed={self.mode!r}; choose one of {', '.join(MODES)}")
    given = [self.coordinator_address is not None, self.num_processes is not None, self.process_id is not None]
    if any(given) and not all(given):
      raise DistributedError("give all three of --coordinator_address, --num_processes and --process_id (or none, "
                             "to let JAX detect SLURM / TPU pods / Kubernetes)")
    if self.explicit():
      if self.mode == "off":
        raise DistributedError("--distributed=off with --coordinator_address/--num_processes/--process_id; drop one")
      if self.num_processes < 1 or not 0 <= self.process_id < self.num_processes:
        raise DistributedError(f"--process_id={self.process_id} must be in [0, --num_processes={self.num_processes})")
      if ":" not in self.coordinator_address:
        raise DistributedError(f"--coordinator_address={self.coordinator_address!r} must be host:port of process 0")


@dataclasses.dataclass
class _State:
  multi: bool = False
  watchdog: "_Watchdog | None" = None
  counter: Any = dataclasses.field(default_factory=itertools.count)


_STATE = _State()


def detected_cluster() -> str | None:
  """The cluster of more than one process JAX would join on its own (SLURM, a TPU pod, ...), or None.

  A one-task SLURM job or a lone pod is one process: no distributed runtime (it
  would bind a port, and a second launcher in the same job would find it taken).
  """
  try:
    from jax._src.clusters import cluster  # pylint: disable=g-import-not-at-top  # private: detection only
    for env in cluster.ClusterEnv._cluster_types:  # pylint: disable=protected-access
      if not env.opt_in_only_method and env.is_env_present():
        return env.__name__ if int(env.get_process_count()) > 1 else None
  except Exception:  # pylint: disable=broad-except  # a JAX without this registry (or a half-set env) detects nothing
    return None
  return None


def initialize(settings: Settings = Settings()) -> bool:
  """Joins the run ``settings`` describe; True when it has more than one process.

  Call before anything touches a JAX device. Idempotent within a process.
  """
  import jax  # pylint: disable=g-import-not-at-top

  settings.check()
  if _STATE.multi:
    return True
  cluster = detected_cluster()
  if settings.mode == "off" or (settings.mode == "auto" and not settings.explicit() and cluster is None):
    return False
  if settings.mode == "on" and not settings.explicit() and cluster is None:
    raise DistributedError("--distributed=on but no cluster of more than one process was detected (SLURM, TPU pod, Kubernetes, "
                           "Open MPI); "
                           "give --coordinator_address, --num_processes and --process_id")
  # CPU collectives need gloo (the default has none); a dead peer must not abort us from inside XLA before the
  # watchdog can say which one it was (recoverability keeps the survivors running until they stop themselves).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.config.update("jax_enable_recoverability", True)
  try:
    jax.distributed.initialize(settings.coordinator_address, settings.num_processes, settings.process_id,
                               heartbeat_timeout_seconds=int(settings.heartbeat_timeout_s),
                               initialization_timeout=int(settings.initialization_timeout_s))
  except Exception as e:  # pylint: disable=broad-except  # XLA raises plain RuntimeErrors / XlaRuntimeErrors
    where = settings.coordinator_address or f"the {cluster} setup"
    raise DistributedError(f"could not join the run at {where} within {settings.initialization_timeout_s} s "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); start every process "
                           "with the same --coordinator_address (process 0's host:port) and --num_processes") from e
  _STATE.multi = jax.process_count() > 1
  if _STATE.multi:
    _STATE.watchdog = _Watchdog(jax.process_count(), jax.process_index())
    _STATE.watchdog.start()
  return _STATE.multi


def process_count() -> int:
  if not _STATE.multi:
    return 1
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_count()


def process_index() -> int:
  if not _STATE.multi:
    return 0
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index()


def is_primary() -> bool:
  """Process 0: the one that writes summaries, metrics, reports and manifests."""
  return process_index() == 0


def share_bounds(n: int, count: int | None = None, index: int | None = None) -> tuple[int, int]:
  """[start, stop) of process ``index``'s contiguous share of ``n`` items (sizes differ by at most one)."""
  count = process_count() if count is None else count
  index = process_index() if index is None else index
  base, extra = divmod(n, count)
  start = index * base + min(index, extra)
  return start, start + base + (index < extra)


def _client():
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  return jax_distributed.global_state.client


def gather_objects(obj: Any, name: str) -> list[Any]:
  """Every process's ``obj`` (picklable), in process order. All processes call it in the same order.

  Exchanged through the coordinator's key-value store under the collective's
  number. Each process also sends ``name``: processes that reached different
  collectives (one took a path the others did not) raise a
  ``CollectiveMismatchError`` naming both steps instead of waiting forever, or,
  when this process is carrying a failure of its own, that failure.
  """
  if not _STATE.multi:
    return [obj]
  client, count, me = _client(), process_count(), process_index()
  key = f"{_KEY_PREFIX}/{next(_STATE.counter)}"
  client.key_value_set_bytes(f"{key}/{me}", pickle.dumps((name, obj), protocol=pickle.HIGHEST_PROTOCOL))
  sent = [(name, obj) if p == me else pickle.loads(client.blocking_key_value_get_bytes(f"{key}/{p}", _WAIT_MS))
          for p in range(count)]
  client.wait_at_barrier(f"{key}/read", _WAIT_MS)  # everyone has read every value: each deletes its own
  client.key_value_delete(f"{key}/{me}")
  elsewhere = [(p, step) for p, (step, _) in enumerate(sent) if step != name]
  if elsewhere:
    if isinstance(obj, _Failure):
      raise obj.error  # this process's own error is why it is out of step: that is the line to show
    where = "; ".join(f"process {p} at {step!r}" for p, step in elsewhere)
    raise CollectiveMismatchError(f"the processes reached different steps: process {me} at {name!r}; {where}. One "
                                  "process failed or took a branch the others did not: the first error in that "
                                  "process's log says why")
  return [value for _, value in sent]


def broadcast_object(obj: Any, name: str) -> Any:
  """Process 0's ``obj`` on every process (the others pass anything, e.g. None)."""
  return gather_objects(obj if is_primary() else None, name)[0]


def barrier(name: str) -> None:
  """Waits for every process (a gather of nothing, so a process at another step is an error, not a hang)."""
  gather_objects(None, name)


@dataclasses.dataclass
class _Failure:
  """An exception of one process, carried to the others so every process raises the same one."""

  process: int
  error: BaseException


def _raise_first_failure(values: Sequence[Any]) -> None:
  for v in values:
    if isinstance(v, _Failure):
      raise v.error


def _portable(error: BaseException) -> BaseException:
  """``error``, or a RuntimeError with its type and text when it cannot be pickled (to travel to the others)."""
  try:
    pickle.loads(pickle.dumps(error))
    return error
  except Exception:  # pylint: disable=broad-except  # some exceptions take arguments their pickle does not keep
    return RuntimeError(f"{type(error).__name__}: {error}")


def alike(fn: Callable[[], Any], name: str) -> Any:
  """``fn()`` on every process; an exception in any process is raised in every one (the lowest process's).

  For a step every process takes for itself (its endpoint check, opening its
  files): the value stays on its process, only exceptions travel. One process:
  ``fn()`` itself.
  """
  if not _STATE.multi:
    return fn()
  try:
    value, failure = fn(), None
  except Exception as e:  # pylint: disable=broad-except  # re-raised below, in every process
    value, failure = None, _Failure(process_index(), _portable(e))
  _raise_first_failure(gather_objects(failure, name))
  return value


def run_shares(items: Sequence[Any], fn: Callable[[Sequence[Any]], Sequence[Any]], name: str) -> list[Any]:
  """``fn`` on this process's contiguous share of ``items``; every process returns all results, in order.

  ``fn`` maps a list to a list of the same length. An exception in any process
  is raised in every process (the lowest process's), so all of them stop at the
  same point instead of waiting for each other.
  """
  if not _STATE.multi:
    return list(fn(items))
  start, stop = share_bounds(len(items))
  try:
    mine: Any = list(fn(items[start:stop]))
    if len(mine) != stop - start:
      raise ValueError(f"{name}: {len(mine)} results for {stop - start} items")
  except Exception as e:  # pylint: disable=broad-except  # re-raised below, in every process
    mine = _Failure(process_index(), _portable(e))
  values = gather_objects(mine, name)
  _raise_first_failure(values)
  return [x for part in values for x in part]


def on_primary(fn: Callable[[], Any], name: str) -> Any:
  """``fn()`` on process 0 only; its result (or its exception) on every process."""
  if not _STATE.multi:
    return fn()
  value = None
  if is_primary():
    try:
      value = fn()
    except Exception as e:  # pylint: disable=broad-except  # re-raised below, in every process
      value = _Failure(0, _portable(e))
  value = broadcast_object(value, name)
  _raise_first_failure([value])
  return value


# ---------------------------------------------------------------------------
# Stopping: a lost peer, and the end of a run
# ---------------------------------------------------------------------------

_LEAVING = f"{_KEY_PREFIX}/leaving"  # <prefix>/<process>: 'finished', or 'failed: <its line>'
_POLL_FAILURES_TOLERATED = 5  # consecutive failed polls (a busy coordinator) before the coordinator counts as gone


def _announce_leaving(reason: str) -> None:
  """Tells the others' watchdogs why this process is about to go (so a finished peer is not a lost one)."""
  try:
    _client().key_value_set(f"{_LEAVING}/{process_index()}", reason, allow_overwrite=True)
  except Exception:  # pylint: disable=broad-except  # the coordinator may be gone: the others learn it anyway
    pass


def _leaving_reason(client, process: int) -> str | None:
  try:
    return client.key_value_try_get(f"{_LEAVING}/{process}")
  except Exception:  # pylint: disable=broad-except  # not set: the process did not say it was leaving
    return None


class _Watchdog(threading.Thread):
  """Ends this process with one line when another process of the run is gone without having finished."""

  def __init__(self, count: int, me: int, interval_s: float = 1.0):
    super().__init__(name="hieramas-peer-watchdog", daemon=True)
    self.count, self.me, self.interval_s = count, me, interval_s
    self.stopped = threading.Event()

  def run(self) -> None:
    client = _client()
    everyone = list(range(self.count))
    failed_polls = 0
    while not self.stopped.wait(self.interval_s):
      try:
        lost = sorted(set(everyone) - set(client.get_live_nodes(everyone)) - {self.me})  # not itself (leaving)
      except Exception as e:  # pylint: disable=broad-except  # a slow reply, or the coordinator is gone
        failed_polls += 1
        if failed_polls >= _POLL_FAILURES_TOLERATED and not self.stopped.is_set():
          _lost_peer([0], self.me, self.count, f" (the coordinator does not answer: {type(e).__name__})")
        continue
      failed_polls = 0
      reasons = {p: _leaving_reason(client, p) for p in lost}
      lost = [p for p in lost if reasons[p] != "finished"]
      if lost and not self.stopped.is_set():
        failures = [f"process {p} {reasons[p]}" for p in lost if (reasons[p] or "").startswith("failed")]
        _lost_peer(lost, self.me, self.count, f" ({'; '.join(failures)})" if failures else "")


def _lost_peer(lost: Sequence[int], me: int, count: int, detail: str = "") -> None:
  names = ", ".join(str(p) for p in lost)
  sys.stdout.flush()
  sys.stderr.write(f"hieramas: process {names} of the {count} in this run stopped{detail}, so process {me} stops "
                   "too; see that process's log for why, then start every process again with the same command "
                   "(training resumes from the last checkpoint)\n")
  sys.stderr.flush()
  os._exit(1)  # pylint: disable=protected-access  # no atexit: JAX's shutdown would wait for the lost peer


def stop_watching() -> None:
  """Stops the watchdog (the run is ending here: other processes may leave without this one being lost)."""
  if _STATE.watchdog is not None:
    _STATE.watchdog.stopped.set()


def finish() -> None:
  """The end of a successful run: waits for every process, then leaves the distributed runtime."""
  if not _STATE.multi:
    return
  import jax  # pylint: disable=g-import-not-at-top
  barrier("finish")
  _announce_leaving("finished")
  stop_watching()
  if is_primary():
    # Process 0 hosts the coordination service: it leaves last, or a process still disconnecting loses the
    # service and XLA aborts it (recoverable tasks skip JAX's own shutdown barrier).
    _wait_for_others_to_leave(30.0)
  jax.distributed.shutdown()
  _STATE.multi = False


def fail_fast(line: str, status: int = 1) -> None:
  """Ends a failed run now: ``line`` on stderr, exit ``status``, no shutdown barrier (peers may be gone).

  The others disconnect first and process 0, which hosts the coordination
  service, waits a few seconds for them: a process whose coordinator vanished
  mid-run is aborted by XLA instead of exiting with ``status``.
  """
  if _STATE.multi:
    _announce_leaving(f"failed: {line.strip() or f'exit status {status}'}")
  stop_watching()
  sys.stdout.flush()
  if line:
    sys.stderr.write(line.rstrip("\n") + "\n")
  sys.stderr.flush()
  if _STATE.multi:
    if is_primary():
      _wait_for_others_to_leave(10.0)
    else:
      leaving = threading.Thread(target=_disconnect, daemon=True)
      leaving.start()
      leaving.join(5.0)
  os._exit(status)  # pylint: disable=protected-access  # JAX's atexit shutdown would wait for absent peers


def _disconnect() -> None:
  import jax  # pylint: disable=g-import-not-at-top
  try:
    jax.distributed.shutdown()  # the preemption notice thread first, then the client: neither polls a dead service
  except Exception:  # pylint: disable=broad-except  # the coordinator may be gone already: nothing to tell it
    pass


def _wait_for_others_to_leave(timeout_s: float) -> None:
  """Process 0: returns once it is the only live process of the run, or after ``timeout_s``."""
  client, everyone = _client(), list(range(process_count()))
  deadline = time.monotonic() + timeout_s
  try:
    while time.monotonic() < deadline and len(client.get_live_nodes(everyone)) > 1:
      time.sleep(0.05)
  except Exception:  # pylint: disable=broad-except  # the service is going down: nothing left to wait for
    return
  time.sleep(0.5)  # a process marked gone may still be closing its RPC threads


def is_multi_process() -> bool:
  return _STATE.multi


def any_process(flag: bool, name: str) -> bool:
  """True on every process when ``flag`` is True on any (e.g. a stop signal one host got before the others)."""
  return any(gather_objects(bool(flag), name)) if _STATE.multi else bool(flag)


# Arrays over every device of every process (their own module; imported here so callers keep one name).
from hieramas_jax.distributed_arrays import data_parallel, global_mesh, pad_rows, total_devices  # noqa: E402,F401  pylint: disable=g-import-not-at-top,wrong-import-position
