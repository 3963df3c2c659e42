"""The namespaces mode: a command that runs a sandboxed process as pid 1's child in fresh namespaces.

Run as pid 1 of new PID, mount, network, IPC and UTS namespaces (root there),
the setup script builds a fresh root that holds only read-only binds of the
system folders, a few devices and a size-capped tmpfs ``/tmp`` (the disk cap)
with the working directory; then it starts the harness, chrooted, as a child,
so that pid 1 stays a plain waiter (its death kills everything in the
namespace). The harness drops to the fresh uid itself (``confinement.confine``).
"""

from __future__ import annotations

import os
import shutil
import subprocess

from .interpreter import Interpreter

SETUP_FAILED = 97  # exit code of the setup script when a mount fails (the `exit 97` below)
WORKDIR = "/tmp/work"  # the working directory inside the new root

_SETUP_SCRIPT = r"""
uid="$1"; fs_kb="$2"; binds="$3"; chroot_bin="$4"; shift 4
mount -t tmpfs -o size=1m,mode=755,nosuid,nodev tmpfs /tmp || exit 97
root=/tmp/root
mkdir -m 755 "$root" "$root/dev" "$root/tmp" "$root/etc" || exit 97
for d in $binds; do
  if [ -L "$d" ]; then
    mkdir -p "$root$(dirname "$d")" && ln -s "$(readlink "$d")" "$root$d" || exit 97
  elif [ -d "$d" ]; then
    mkdir -p "$root$d" && mount --bind "$d" "$root$d" && mount -o remount,bind,ro,nosuid,nodev "$root$d" || exit 97
  elif [ -f "$d" ]; then
    mkdir -p "$root$(dirname "$d")" && touch "$root$d" && mount --bind "$d" "$root$d" \
      && mount -o remount,bind,ro,nosuid,nodev "$root$d" || exit 97
  fi
done
for f in null zero random urandom; do
  touch "$root/dev/$f" && mount --bind "/dev/$f" "$root/dev/$f" || exit 97
done
mount -t tmpfs -o "size=${fs_kb}k,mode=755,nosuid,nodev" tmpfs "$root/tmp" || exit 97
mkdir -m 700 "$root/tmp/work" && chown "$uid:$uid" "$root/tmp/work" || exit 97
"$chroot_bin" "$root" "$@"
exit $?
"""

_UNSHARE_FLAGS = ("--pid", "--fork", "--kill-child", "--mount-proc", "--net", "--ipc", "--uts",
                  "--propagation", "private")


def command(interpreter: Interpreter, uid: int, disk_kb: int, inner: list[str]) -> list[str]:
  """``inner`` (run in the new root) wrapped in the namespaces, the binds and a ``disk_kb`` tmpfs for ``uid``."""
  return [shutil.which("unshare") or "unshare", *_UNSHARE_FLAGS, "--", "/bin/sh", "-c", _SETUP_SCRIPT, "sh",
          str(uid), str(disk_kb), " ".join(interpreter.bind_paths), shutil.which("chroot") or "/usr/sbin/chroot",
          *inner]


def usable(interpreter: Interpreter) -> bool:
  """Whether the namespaces mode works here: root, the tools, and a probe that sees only its working folder."""
  if os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("unshare", "mount", "chown", "chroot")):
    return False
  probe = command(interpreter, 12345, 1024,
                  [interpreter.python, "-I", "-B", "-c", "import os; assert os.listdir('/tmp') == ['work']"])
  try:
    completed = subprocess.run(probe, capture_output=True, timeout=30, check=False, cwd="/")
  except (OSError, subprocess.TimeoutExpired):
    return False
  return completed.returncode == 0
