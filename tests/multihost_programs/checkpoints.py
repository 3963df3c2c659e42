"""A multi-host program for tests/test_distributed.py: a Checkpointer written and read by every process.

--save=STEP writes a state (values from --seed) at STEP; --restore prints (process 0, one JSON line) the newest
step's metadata step and a checksum of every restored leaf. Run with 1 or 2 processes on the same --dir.
"""

import json

from absl import app
from absl import flags

from launch import multihost

from hieramas_jax import distributed

_DIR = flags.DEFINE_string("dir", None, "Checkpoint folder.")
_SAVE = flags.DEFINE_integer("save", -1, "Step to write (-1: none).")
_SEED = flags.DEFINE_integer("seed", 0, "Values of the written state.")
_RESTORE = flags.DEFINE_bool("restore", False, "Restore the newest step and print it.")


def state(seed: int):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  return {"params": {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32), "b": jnp.asarray(rng.normal(size=3))},
          "baseline": rng.normal(size=4).astype(np.float32), "count": np.int32(seed)}


def main(argv):
  del argv
  multihost.join("checkpoints")
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from hieramas_jax import checkpointing  # pylint: disable=g-import-not-at-top
  with checkpointing.Checkpointer(_DIR.value, max_to_keep=2) as ckpt:
    if _SAVE.value >= 0:
      ckpt.save(_SAVE.value, state(_SEED.value), {"seed": _SEED.value}, force=True)
    if _RESTORE.value:
      template = state(0)
      restored, meta = ckpt.restore(checkpointing.abstract_tree(template))
      leaves = jax.tree_util.tree_leaves_with_path(restored)
      out = {jax.tree_util.keystr(k): np.asarray(v).tolist() for k, v in leaves}
      everyone = distributed.gather_objects(out, "restored")  # what every process restored
      if distributed.is_primary():
        print(json.dumps({"step": meta["step"], "seed": meta["seed"], "state": out, "every_process": everyone,
                          "steps": ckpt.all_steps()}))
  distributed.finish()


if __name__ == "__main__":
  app.run(main)
