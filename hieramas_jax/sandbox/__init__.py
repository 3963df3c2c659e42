"""Isolated execution of untrusted generated code, with verdicts the program cannot forge.

``run_program`` runs one program and returns a verdict: ``passed``, ``failed``
(an assertion or error, or an exit before the checks completed), ``timeout``
(wall-clock or CPU time limit) or ``crashed`` (memory or disk limit, killed by
a signal, or no verdict at all). ``run_many`` runs many in parallel.

Where the verdict comes from. The program runs in one sandboxed process (the
*program* role of ``harness.py``); the problem's ``check(candidate)`` runs in
another (the *driver*, ``driver.py``), with a proxy candidate that sends each
call's arguments to the program and decodes its reply into plain values
(exactly int, float, str, bool, None, list, tuple, dict, set, frozenset, bytes
or complex). The
program never holds the tests, the expected values, or any descriptor that
leads to the host; the host reads a verdict only from the driver, which runs
no program code. So whatever the program does to its own process (signal
handlers reaching frames, patched classes, ctypes, exits, fake markers), the
most it can do is answer calls, and it passes only if its answers are right.
A program-only run (no entry point) passes when the program says it ran to
the end: there is nothing to check but that.

Containment (``isolation_mode()`` picks the strongest that works; the pick and
its guarantees are printed once per process, and ``describe_isolation()``):

* ``namespaces`` (root, ``unshare`` usable): each process runs in new PID,
  mount, network, IPC and UTS namespaces, chrooted into a fresh root that holds
  only read-only binds of the system folders (``/usr``, ``/lib*``, ``/bin``...),
  ``/dev/{null,zero,random,urandom}`` and a size-capped tmpfs ``/tmp`` (the
  disk cap) with the working directory; the project, the benchmark files and the
  host's ``/tmp`` do not exist there. It runs as a fresh unprivileged uid; the
  network namespace has no interface up; the death of the namespace's first
  process kills everything in it.
* ``uid`` (root, no namespaces): a fresh uid, a private working directory on
  the host whose size the host watches (disk cap), and Landlock (below).
* ``plain`` (not root): the same without the uid switch.

In every mode, when the kernel has them: seccomp (no new processes, only
threads, so ``RLIMIT_AS`` caps the program's total memory; no sockets but
AF_UNIX pairs; no io_uring; signals only to itself) and Landlock (reading only
the interpreter's own files, i.e. its standard library without site-packages
and the shared libraries it loads; writing only the working directory; no TCP;
signals and abstract sockets scoped to the process). Plus ``RLIMIT_CPU``,
``RLIMIT_FSIZE``, ``RLIMIT_NPROC``, no core dumps, a non-dumpable process, a
wall-clock deadline after which every process is killed, and a scrubbed
environment for ``python -I -B``. Without seccomp the process cap falls back to
``RLIMIT_NPROC=1`` for the fresh uid (no threads either); without Landlock the
``uid`` and ``plain`` modes can read world-readable files and write where the
uid may (the README states each mode's guarantees).

Modules, by concern (host side unless marked):

* ``runner``: ``run_program`` / ``run_many``, the pipes and setups of a run.
* ``verdicts``: ``Program``, ``SandboxResult``, output types, and the host's
  verdict from the driver's report and how the processes ended.
* ``modes``: which isolation mode a run gets and its one-line description;
  ``interpreter``: the sandbox's interpreter, probed for its files, Landlock and
  seccomp; ``namespaces``: the unshare/chroot command of the namespaces mode.
* ``limits``: the run's limits and each process's rlimits; ``processes``: fresh
  uids, spawning, output tails, killing; ``monitor``: the host's I/O loop with
  the deadline and the disk watch.
* Inside the sandbox (standard library only, sent by ``bootstrap``):
  ``harness`` (entry point and the program server), ``driver`` (the trusted
  check and the proxy candidate), ``confinement`` (rlimits, uid, seccomp,
  Landlock), ``channel`` (JSON lines), ``codec`` (the value codec, also used by
  the host).
"""

from .modes import ISOLATION_MODES, describe_isolation, isolation_mode
from .runner import run_many, run_program
from .verdicts import CRASHED, FAILED, PASSED, TIMEOUT, DigestOutput, Program, RaisedOutput, SandboxResult

__all__ = ["CRASHED", "FAILED", "ISOLATION_MODES", "PASSED", "TIMEOUT", "DigestOutput", "Program", "RaisedOutput",
           "SandboxResult", "describe_isolation", "isolation_mode", "run_many", "run_program"]
