"""The one wrapper around orbax's CheckpointManager.

A checkpoint holds one pytree of arrays (selector, classifier, optimizer states,
whatever the caller puts in it) plus JSON metadata (config, step, package
versions). Restoring goes into an abstract target whose leaves carry explicit
shardings, so a checkpoint written on one device layout (8 GPUs, say) restores
on another (1 CPU): orbax reads each array and lays it out as the target says.

In a multi-host run every process calls ``save`` and ``restore`` with the same
values (the state is replicated); orbax writes it once, collectively, into a
folder every process sees (a shared filesystem or a bucket), and process 0
writes the manifests. A checkpoint written by N processes restores in M.

Every finished step gets a manifest of its files (size and CRC-32). Restoring
checks it first: a step with a truncated or changed file (a full disk, a copy
cut short) is moved out of the way, with a warning, and the newest intact step
is restored instead. A step orbax fails to read (one without a manifest:
written before manifests existed, or killed between orbax's commit and the
manifest) moves aside only when an older step reads with the same target;
otherwise the target is what is wrong, and orbax's error is raised.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import pathlib
import platform
import shutil
import zlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from hieramas_jax import distributed

_VERSIONED_PACKAGES = ("hieramas_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "jraph")
MANIFEST_NAME = "hieramas_manifest.json"  # in each step's folder, beside orbax's files
_CHUNK = 1 << 20

logger = logging.getLogger(__name__)


class UnreadableCheckpointError(FileNotFoundError):
  """Checkpoints exist but none of them can be read."""


def package_versions() -> dict[str, str]:
  """Versions of the packages whose behaviour a checkpoint depends on."""
  out = {"python": platform.python_version()}
  for name in _VERSIONED_PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = "not installed"
  return out


def abstract_tree(tree: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
  """ShapeDtypeStructs of ``tree`` placed with ``sharding`` (default: the first local device)."""
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def leaf(x):
    x = x if hasattr(x, "shape") else np.asarray(x)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  return jax.tree_util.tree_map(leaf, tree)


def _crc32(path: pathlib.Path) -> int:
  crc = 0
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      crc = zlib.crc32(chunk, crc)
  return crc


def write_manifest(step_dir: str | pathlib.Path) -> None:
  """Records the size and CRC-32 of every file of a finished step (atomically)."""
  step_dir = pathlib.Path(step_dir)
  files = {}
  for path in sorted(step_dir.rglob("*")):
    if path.is_file() and path.name != MANIFEST_NAME:
      files[path.relative_to(step_dir).as_posix()] = [path.stat().st_size, _crc32(path)]
  tmp = step_dir / (MANIFEST_NAME + ".tmp")
  tmp.write_text(json.dumps({"files": files}))
  os.replace(tmp, step_dir / MANIFEST_NAME)


def manifest_problem(step_dir: str | pathlib.Path) -> str | None:
  """What is wrong with a step's files according to its manifest; None if intact or unchecked (no manifest)."""
  step_dir = pathlib.Path(step_dir)
  manifest = step_dir / MANIFEST_NAME
  if not manifest.exists():
    return None
  try:
    files = json.loads(manifest.read_text())["files"]
  except (ValueError, KeyError, TypeError) as e:
    return f"its manifest {manifest.name} is unreadable ({e})"
  for name, (size, crc) in files.items():
    path = step_dir / name
    if not path.is_file():
      return f"file {name} is missing"
    actual = path.stat().st_size
    if actual != size:
      return f"file {name} has {actual} bytes, {size} were written"
    if _crc32(path) != crc:
      return f"file {name} does not match its CRC-32 (changed after it was written)"
  return None


class Checkpointer:
  """Saves and restores (state pytree, JSON metadata) pairs by step.

  Keeps the newest ``max_to_keep`` steps; ``latest_step()`` drives resume.
  ``restore`` and ``metadata`` without a step fall back from an unreadable
  newest step to the newest readable one; unreadable steps move to the sibling
  folder ``<directory>_unreadable`` (see the module doc).
  """

  def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 3, save_interval_steps: int = 1):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_interval_steps, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "metadata"))
    self._unmanifested: list[int] = []  # saved steps whose manifest waits for orbax to finish writing

  def save(self, step: int, state: Any, metadata: dict[str, Any] | None = None, *, force: bool = False,
           wait: bool = True) -> bool:
    """Writes ``state`` and metadata at ``step``; returns whether a checkpoint was written."""
    meta = dict(metadata or {})
    meta.setdefault("step", int(step))
    meta.setdefault("versions", package_versions())
    if distributed.is_multi_process():
      # Every process holds the same state on its own devices; orbax writes a multi-host run's arrays only when
      # they are global, and numpy values once (from process 0), which is what a replicated state needs.
      state = jax.tree_util.tree_map(lambda x: np.asarray(x) if isinstance(x, jax.Array) else x, state)
    saved = self._manager.save(
        int(step),
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(meta)),
        force=force)
    if saved:
      self._unmanifested.append(int(step))
    if wait:
      self.wait()
    return bool(saved)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores into ``abstract_state`` (ShapeDtypeStructs with shardings; see ``abstract_tree``).

    ``step`` defaults to the newest readable one (see the class doc). Raises
    FileNotFoundError when there is none, UnreadableCheckpointError when every
    step is damaged (or the given ``step`` is).
    """
    def read(at: int):
      restored = self._manager.restore(
          at, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      metadata=ocp.args.JsonRestore()))
      return restored["state"], dict(restored["metadata"] or {})

    if step is not None:
      step = int(step)
      if step not in self.all_steps():
        raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; steps there: {self.all_steps()}")
      return self._read_checked(read, step)
    return self._newest_readable(read)

  def metadata(self, step: int | None = None) -> dict[str, Any]:
    """The JSON metadata alone (no arrays read); ``step`` defaults to the newest readable one."""
    def read(at: int):
      restored = self._manager.restore(at, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
      return dict(restored["metadata"])

    if step is not None:
      return self._read_checked(read, int(step))
    return self._newest_readable(read)

  def _read_checked(self, read, step: int):
    problem = manifest_problem(self._step_dir(step))
    if problem is not None:
      raise UnreadableCheckpointError(f"checkpoint step {step} in {self.directory} is damaged: {problem}; "
                                      "restore an older step or put back an intact copy")
    return read(step)

  def _newest_readable(self, read):
    """``read(step)`` of the newest step that reads.

    A step whose files differ from its manifest is damaged for sure: it moves
    aside at once. A step orbax fails on is damaged only if an older step reads
    with the same target (else the target is what is wrong: that error is
    raised and nothing moves).
    """
    if self.latest_step() is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}; train first or point to the right workdir")
    damaged, failed = [], []  # (step, what is wrong); failed: (step, problem, exception)
    for step in sorted(self.all_steps(), reverse=True):
      problem = manifest_problem(self._step_dir(step))
      if problem is not None:
        damaged.append((step, problem))
        continue
      try:
        result = read(step)
      except Exception as e:  # pylint: disable=broad-except  # orbax and tensorstore raise many kinds
        first_line = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        failed.append((step, f"orbax cannot read it ({type(e).__name__}: {first_line})", e))
        continue
      for bad_step, problem in damaged + [(f[0], f[1]) for f in failed]:
        logger.warning("checkpoint step %d in %s is unreadable: %s; moved it to %s; restoring step %d instead",
                       bad_step, self.directory, problem, self._move_aside(bad_step), step)
      return result
    for bad_step, problem in damaged:
      logger.warning("checkpoint step %d in %s is unreadable: %s; moved it to %s", bad_step, self.directory, problem,
                     self._move_aside(bad_step))
    if failed:  # no step reads with this target: most likely the target, not the files, is wrong
      raise failed[0][2]
    raise UnreadableCheckpointError(
        f"every checkpoint in {self.directory} is damaged (steps {sorted(s for s, _ in damaged)}, moved to "
        f"{self.directory}_unreadable); run again to start from scratch, or put back an intact copy of the folder")

  def _step_dir(self, step: int) -> pathlib.Path:
    return self.directory / str(step)

  def _move_aside(self, step: int) -> pathlib.Path:
    """Moves an unreadable step out of orbax's folder (kept for inspection; never written to again)."""
    aside = self.directory.parent / f"{self.directory.name}_unreadable"
    aside.mkdir(parents=True, exist_ok=True)
    target, n = aside / str(step), 1
    while target.exists():
      target, n = aside / f"{step}.{n}", n + 1
    if distributed.is_primary():  # the folder is shared by every process of a multi-host run: one mover
      try:
        shutil.move(str(self._step_dir(step)), str(target))
      except FileNotFoundError:  # removed meanwhile (another reader, or orbax's max_to_keep)
        pass
    distributed.barrier(f"checkpoint step {step} moved aside")
    self._manager.reload()
    return target

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def wait(self) -> None:
    """Waits for pending saves, then writes their manifests."""
    self._manager.wait_until_finished()
    pending, self._unmanifested = self._unmanifested, []
    for step in pending:
      if jax.process_index() == 0 and self._step_dir(step).is_dir():  # one writer; not dropped by max_to_keep
        write_manifest(self._step_dir(step))
    if pending:
      distributed.barrier("checkpoint manifests written")  # no process restores a step before its manifest exists

  def close(self) -> None:
    self.wait()
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
