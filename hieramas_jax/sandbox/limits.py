"""Resource limits of a run, and the rlimits each sandboxed process sets on itself (``confinement.confine``)."""

from __future__ import annotations

import dataclasses
import math
import os

from . import processes

MAX_MESSAGE_BYTES = 64 << 20  # bound on one protocol message (a reply, the driver's report)
DIGEST_ABOVE = 65536  # an output whose encoding is longer comes back as its digest
_DRIVER_MIN_MEMORY_MB = 1024  # the trusted driver holds the inputs, whatever the program's limit
_DRIVER_MIN_PROCS = 4


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one run may use; see ``run_program`` for each field."""

  timeout_s: float
  memory_mb: int
  max_procs: int
  max_file_mb: int

  def __post_init__(self):
    if self.timeout_s <= 0 or self.memory_mb < 32 or self.max_procs < 1 or self.max_file_mb < 1:
      raise ValueError("limits must be positive (memory_mb at least 32)")

  def process_cap(self, mode: str, seccomp: bool) -> int:
    """RLIMIT_NPROC of the run's processes (it counts every task of their uid)."""
    if seccomp:
      return self.max_procs  # threads only: seccomp refuses new processes
    if mode != "plain":
      return 1  # a fresh uid: no threads either
    return processes.count_user_tasks(os.getuid()) + self.max_procs  # plain: the user's tasks count too

  def rlimits(self, role: str, process_cap: int) -> dict[str, int]:
    """The ``limits`` of a role's setup; the driver runs trusted code and gets room for the inputs."""
    limits = {"cpu_s": int(math.ceil(self.timeout_s)) + 1, "memory_mb": int(self.memory_mb),
              "file_mb": int(self.max_file_mb), "nproc": int(process_cap)}
    if role == "driver":
      limits.update(memory_mb=max(limits["memory_mb"], _DRIVER_MIN_MEMORY_MB),
                    nproc=max(limits["nproc"], _DRIVER_MIN_PROCS))
    return limits
