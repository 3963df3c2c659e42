"""A training run's claim on its workdir, and the checks made before it resumes there.

``prepare`` runs first in ``train_and_evaluate``:

1. the workdir must be a writable folder (else one error naming it and the fix);
2. it takes an exclusive lock on ``workdir/.lock`` (``fcntl.flock``, non-blocking)
   held until the process ends: a second run on the same workdir stops at once
   with the holder's pid, instead of the two deleting each other's checkpoint
   temp folders;
3. the config saved in the workdir's checkpoints must agree with this run's on
   the fields that make it the same experiment (``RESUME_FIELDS``): the random
   stream, the data, the pool and the parameter shapes. A difference there is one
   error naming the fields; a difference elsewhere (learning rate, number of
   steps, timeouts) is allowed and named in a warning.

In a multi-host run the workdir is one folder every process sees at the same
path (a shared filesystem): process 0 alone checks it and holds the lock, and
every process reads the saved config (reading checkpoints is collective), so a
mismatch is the same error on every process.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pathlib
import tempfile
from typing import Any

import ml_collections

from hieramas_jax import checkpointing
from hieramas_jax import config as config_lib
from hieramas_jax import distributed
from hieramas_jax.train import environment

LOCK_NAME = ".lock"
STAGES = ("stage1", "stage2")

# Fields that define the experiment a checkpoint belongs to: what random stream, data, pool and parameter shapes
# it was trained with. Resuming with any of them changed mixes two runs (or fails on shapes).
RESUME_FIELDS = (
    "seed",
    "task.name", "task.source", "task.data_path", "task.num_train", "task.num_val", "task.num_test",
    "llm.backend", "llm.pool", "llm.exclude_models", "llm.decision_model", "llm.sim_seed", "llm.sim_role_effects",
    "encoder.kind", "encoder.path", "encoder.model", "encoder.dim",
    "selector.num_proposers", "selector.hidden_dim", "selector.synthesizer_may_skip", "selector.proposer_may_skip",
    "selector.skip_head", "selector.input_scale",
    "gcn.role_dim", "gcn.hidden_dim", "gcn.num_layers", "gcn.mlp_dim",
    "graphs.density_range", "graphs.stage2_density_range", "graphs.train_pool_size", "graphs.num_candidates",
    "stage1.batch_size", "stage1.baseline", "stage1.group_size",
    "stage2.graphs_per_query", "stage2.top_k", "stage2.samples_per_graph",
)
# Fields that change how a run goes, not what it computes: they differ silently.
RUNTIME_FIELDS = (
    "stages", "llm.timeout_s", "llm.max_retries", "llm.max_concurrency", "llm.cache", "llm.sim_latency_s",
    "encoder.cache", "encoder.base_url", "encoder.api_key_env", "gcn.impl", "checkpoint.every_steps",
    "checkpoint.max_to_keep",
)
# The model pool's names come from llm.pool and llm.models together; compared as one derived field.
POOL_FIELD = "model pool (llm.pool / llm.models names)"

logger = logging.getLogger(__name__)
_held_locks: dict[pathlib.Path, int] = {}  # workdir -> descriptor of its lock file, open until the process ends


class WorkdirError(environment.ConfigError):
  """The workdir cannot be used: not a writable folder, or another run holds it."""


class ResumeMismatchError(environment.ConfigError):
  """The workdir's checkpoints were trained with a config that differs on a resume field."""


def prepare(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> pathlib.Path:
  """Checks the workdir is writable, locks it for this run, and checks the saved config (see module doc).

  Multi-host: process 0 checks and locks; an error of either check is raised on every process.
  """
  workdir = distributed.on_primary(lambda: lock(workdir), "workdir checked and locked by process 0")
  distributed.alike(lambda: check_resume(config, workdir), "saved config checked")
  return workdir


def lock(workdir: str | pathlib.Path) -> pathlib.Path:
  """Takes the exclusive lock of ``workdir`` for the rest of the process (again: no-op); returns its path.

  Raises WorkdirError when the workdir is not a writable folder or another
  process holds its lock.
  """
  workdir = pathlib.Path(workdir).absolute()
  if workdir in _held_locks:
    return workdir
  _check_writable(workdir)
  path = workdir / LOCK_NAME
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise WorkdirError(_not_writable(workdir, e)) from None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = _read_pid(fd)
    os.close(fd)
    raise WorkdirError(
        f"workdir {workdir} is in use by another training run (pid {holder or 'unknown'}, lock file {path}); "
        f"wait for it to finish or stop it{f' (kill {holder})' if holder else ''}, or pass another --workdir"
    ) from None
  except OSError as e:  # no flock on this filesystem (some network mounts)
    os.close(fd)
    raise WorkdirError(f"cannot lock workdir {workdir} ({e.strerror}); put the workdir on a local disk") from None
  os.ftruncate(fd, 0)
  os.write(fd, f"{os.getpid()}\n".encode())
  _held_locks[workdir] = fd
  return workdir


def release(workdir: str | pathlib.Path) -> None:
  """Gives up this process's lock of ``workdir`` (for callers that train twice in one process)."""
  fd = _held_locks.pop(pathlib.Path(workdir).absolute(), None)
  if fd is not None:
    os.close(fd)  # closing the descriptor releases the flock


def _read_pid(fd: int) -> int | None:
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    return int(os.read(fd, 32).decode().strip())
  except (OSError, ValueError):  # the holder has not written its pid yet
    return None


def _not_writable(workdir: pathlib.Path, error: OSError) -> str:
  return (f"workdir {workdir} is not writable ({error.strerror or error}); pass a writable --workdir, or make it "
          f"writable (chmod u+w {workdir}, or remount its disk read-write)")


def _check_writable(workdir: pathlib.Path) -> None:
  if workdir.exists() and not workdir.is_dir():
    raise WorkdirError(f"workdir {workdir} exists and is not a folder; pass a folder as --workdir")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=workdir):  # a probe: root passes permission checks, not a read-only mount
      pass
  except NotADirectoryError:
    raise WorkdirError(f"workdir {workdir} lies under a file, not a folder; pass a folder as --workdir") from None
  except OSError as e:
    raise WorkdirError(_not_writable(workdir, e)) from None


# ---------------------------------------------------------------------------
# Saved config vs this run's
# ---------------------------------------------------------------------------


def saved_checkpoint_config(workdir: str | pathlib.Path, stage: str) -> tuple[int, dict[str, Any]] | None:
  """(step, config dict) of the newest readable checkpoint of ``stage`` in ``workdir``; None without one."""
  folder = pathlib.Path(workdir) / "checkpoints" / stage
  # Checked first: opening a Checkpointer would create the folder. Process 0's answer, as opening one is collective.
  if not distributed.broadcast_object(folder.is_dir(), f"{stage} checkpoints exist"):
    return None
  with checkpointing.Checkpointer(folder) as ckpt:
    if ckpt.latest_step() is None:
      return None
    meta = ckpt.metadata()
    step = int(meta.get("step", ckpt.latest_step() or 0))
  if not isinstance(meta.get("config"), dict):
    return None
  return step, meta["config"]


def config_differences(saved: dict[str, Any], config: ml_collections.ConfigDict) -> tuple[list, list]:
  """(resume-field differences, other differences) as (field, saved value, new value) triples.

  ``saved`` is a checkpoint's config dict; fields it lacks take the value that
  reproduces how it was trained (``config.from_saved``).
  """
  old = config_lib.from_saved(saved).to_dict()
  new = config.to_dict()
  resume, other = [], []
  old_pool, new_pool = _pool_names(old), _pool_names(new)
  if old_pool != new_pool:
    resume.append((POOL_FIELD, old_pool, new_pool))
  for field in sorted(set(_flatten(old)) | set(_flatten(new))):
    a, b = _normal(_get(old, field)), _normal(_get(new, field))
    if a == b or field in RUNTIME_FIELDS:
      continue
    (resume if field in RESUME_FIELDS else other).append((field, a, b))
  return resume, other


def check_resume(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> None:
  """Raises ResumeMismatchError when the workdir's checkpoints belong to another experiment; warns of other changes."""
  workdir = pathlib.Path(workdir).absolute()
  warned = False
  for stage in STAGES:
    found = saved_checkpoint_config(workdir, stage)
    if found is None:
      continue
    step, saved = found
    resume, other = config_differences(saved, config)
    if resume:
      changes = "; ".join(f"{field} {_show(a)} -> {_show(b)}" for field, a, b in resume)
      restore = " ".join(f"--config.{field}={_flag_value(a)}" for field, a, _ in resume if field != POOL_FIELD)
      raise ResumeMismatchError(
          f"workdir {workdir} holds a {stage} checkpoint (step {step}) of another experiment: {changes}. "
          f"Use a new --workdir for the new settings, or resume with the old values"
          f"{f' ({restore})' if restore else ''}")
    if other and not warned and distributed.is_primary():  # one warning per run, not one per process
      warned = True
      logger.warning("resuming in %s (%s step %d) with changed settings: %s", workdir, stage, step,
                     "; ".join(f"{field} {_show(a)} -> {_show(b)}" for field, a, b in other))


def _pool_names(config: dict[str, Any]) -> list[str]:
  try:
    return [s.name for s in environment.pool_specs(ml_collections.ConfigDict(config))]
  except (environment.ConfigError, TypeError, ValueError) as e:  # validate_config reports a broken pool later
    return [f"<invalid pool: {e}>"]


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[str]:
  out = []
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict) and path != "llm.sim_role_effects":
      out.extend(_flatten(value, path + "."))
    else:
      out.append(path)
  return out


def _get(tree: dict[str, Any], field: str) -> Any:
  node: Any = tree
  for key in field.split("."):
    if not isinstance(node, dict) or key not in node:
      return "<absent>"
    node = node[key]
  return node


def _normal(value: Any) -> Any:
  """The value as JSON gives it back (tuples become lists), so saved and new compare alike."""
  return json.loads(json.dumps(value, default=str))


def _show(value: Any) -> str:
  text = json.dumps(value, default=str)
  return text if len(text) <= 120 else text[:117] + "..."


def _flag_value(value: Any) -> str:
  if isinstance(value, str):
    return value
  if isinstance(value, (list, dict)):
    return f"'{json.dumps(value)}'"
  return json.dumps(value)
