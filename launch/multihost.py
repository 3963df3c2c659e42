"""The launchers' multi-host flags: one process per host, joined through JAX's distributed runtime.

Every launcher that imports this module accepts:

  --distributed=auto|on|off   auto: join when the three flags below are given or JAX detects a cluster
                              (SLURM, TPU pod, Kubernetes, Open MPI); on: must join; off: one process
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I   (explicit setup, all three or none)
  --heartbeat_timeout_s=60    after this long without a heartbeat a process counts as lost and the others stop

``join()`` is the first thing a launcher's ``main`` does, before any JAX device is touched.
"""

from __future__ import annotations

from absl import flags

from hieramas_jax import distributed

_MODE = flags.DEFINE_enum("distributed", "auto", list(distributed.MODES),
                          "Multi-host run: auto (explicit flags or a detected cluster), on, off.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run, one per host (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes) (multi-host).")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout_s", 60, "Seconds without a heartbeat before a process of a "
                                  "multi-host run counts as lost (the others then stop).")


def settings() -> distributed.Settings:
  return distributed.Settings(mode=_MODE.value, coordinator_address=_COORDINATOR.value,
                              num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
                              heartbeat_timeout_s=_HEARTBEAT.value)


def join(program: str) -> bool:
  """Joins the run the flags describe (True: several processes); a setup error exits 1 with one line."""
  try:
    return distributed.initialize(settings())
  except distributed.DistributedError as e:
    raise SystemExit(f"{program}: DistributedError: {e}") from None
