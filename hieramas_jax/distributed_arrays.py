"""Arrays over every device of every process: the data-parallel update of a multi-host run.

``data_parallel`` runs a jitted update on a batch split by rows over every
device of every process with the parameters replicated, so XLA reduces over all
of them (gloo on CPU, NCCL on GPU, ICI on TPU) and the gradient is averaged over
processes. Re-exported by ``hieramas_jax.distributed``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from hieramas_jax import distributed


def global_mesh(axis: str = "data"):
  """A 1-D mesh of every device of every process (process order, then local order)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top
  return Mesh(np.array(jax.devices()), (axis,))


def _global(x: Any, sharding) -> Any:
  """A global array from a host value every process holds in full (each fills its own shards)."""
  import jax  # pylint: disable=g-import-not-at-top
  value = np.asarray(x)
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def _host(x: Any) -> np.ndarray:
  """The value of a fully replicated global array (each process holds a copy)."""
  return np.asarray(x.addressable_data(0))


def pad_rows(tree: Any, multiple: int) -> tuple[Any, int]:
  """Every leaf's leading axis zero-padded to a multiple of ``multiple``; (padded tree, original rows)."""
  import jax  # pylint: disable=g-import-not-at-top
  leaves = jax.tree_util.tree_leaves(tree)
  rows = int(np.shape(leaves[0])[0])
  extra = -rows % multiple

  def pad(x):
    x = np.asarray(x)
    return np.concatenate([x, np.zeros((extra, *x.shape[1:]), x.dtype)]) if extra else x

  return jax.tree_util.tree_map(pad, tree), rows


def data_parallel(fn: Callable[..., Any], replicated: Sequence[Any], batch: Any) -> Any:
  """``fn(*replicated, batch)`` with ``batch`` split by rows over every device of every process.

  ``fn`` is jitted (or jittable). Each process passes the same full host values;
  the parameters and optimizer state in ``replicated`` are replicated on every
  device and every leaf of ``batch`` is sharded along its first axis, whose
  length must divide by the total device count (pad with rows of zero weight:
  ``pad_rows``). XLA reduces across the devices of all processes, so a mean over
  the batch is the same mean as in one process (to float rounding) and the
  gradient is averaged over processes. Returns the outputs as host-local values
  (every output must come out replicated).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  mesh = global_mesh()
  every, rows = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
  args = [jax.tree_util.tree_map(lambda x: _global(x, every), tree) for tree in replicated]
  sharded = jax.tree_util.tree_map(lambda x: _global(x, rows), batch)
  out = fn(*args, sharded)

  def back(x):
    if not isinstance(x, jax.Array):
      return x
    if not x.is_fully_replicated:
      raise distributed.DistributedError(f"data_parallel: an output of shape {x.shape} is not replicated ({x.sharding}); "
                             "reduce it over the batch inside fn")
    return jax.numpy.asarray(_host(x))

  return jax.tree_util.tree_map(back, out)


def total_devices() -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.device_count() if distributed.is_multi_process() else jax.local_device_count()
