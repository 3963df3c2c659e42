"""The one wrapper around orbax's CheckpointManager.

A checkpoint holds one pytree of arrays (selector, classifier, optimizer states,
whatever the caller puts in it) plus JSON metadata (config, step, package
versions). Restoring goes into an abstract target whose leaves carry explicit
shardings, so a checkpoint written on one device layout (8 GPUs, say) restores
on another (1 CPU): orbax reads each array and lays it out as the target says.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import platform
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

_VERSIONED_PACKAGES = ("hieramas_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "jraph")


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


class Checkpointer:
  """Saves and restores (state pytree, JSON metadata) pairs by step.

  Keeps the newest ``max_to_keep`` steps; ``latest_step()`` drives resume.
  """

  def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 3, save_interval_steps: int = 1):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_interval_steps, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "metadata"))

  def save(self, step: int, state: Any, metadata: dict[str, Any] | None = None, *, force: bool = False,
           wait: bool = True) -> bool:
    """Writes ``state`` and metadata at ``step``; returns whether a checkpoint was written."""
    meta = dict(metadata or {})
    meta.setdefault("step", int(step))
    meta.setdefault("versions", package_versions())
    saved = self._manager.save(
        int(step),
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(meta)),
        force=force)
    if wait:
      self._manager.wait_until_finished()
    return bool(saved)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores into ``abstract_state`` (ShapeDtypeStructs with shardings; see ``abstract_tree``).

    ``step`` defaults to the latest. Raises FileNotFoundError when there is none.
    """
    step = self.latest_step() if step is None else int(step)
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}; train first or point to the right workdir")
    if step not in self.all_steps():
      raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; steps there: {self.all_steps()}")
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), metadata=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["metadata"] or {})

  def metadata(self, step: int | None = None) -> dict[str, Any]:
    """The JSON metadata alone (no arrays read)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    restored = self._manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
    return dict(restored["metadata"])

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
