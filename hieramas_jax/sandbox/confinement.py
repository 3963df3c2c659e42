"""How a sandboxed process confines itself: resource limits, uid, seccomp and Landlock.

Runs inside the sandbox (see ``bootstrap``): standard library only, Python 3.8
syntax. ``confine`` applies, in order: resource limits, the switch to the fresh
uid (namespaces mode), a non-dumpable process, a seccomp filter (no new
processes, sockets only of the AF_UNIX family, no io_uring, signals only to
itself) and a Landlock ruleset (reading only the interpreter's files, writing
only the working directory, no TCP, signals and abstract sockets scoped to the
process). The host imports it for ``CONFINE_FAILED`` only.
"""

import os
import struct

CONFINE_FAILED = 96  # exit code of a sandboxed process that could not confine itself

_LANDLOCK_CREATE, _LANDLOCK_ADD_RULE, _LANDLOCK_RESTRICT = 444, 445, 446  # the same on every architecture
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1, 2, 4, 8
_FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 14, 1 << 15
_PR_SET_NO_NEW_PRIVS, _PR_SET_DUMPABLE, _PR_SET_SECCOMP = 38, 4, 22

# Syscall numbers per architecture (AUDIT_ARCH value, numbers). Missing: not on that architecture.
_SECCOMP_ARCHES = {
    "x86_64": (0xC000003E, dict(socket=41, clone=56, fork=57, vfork=58, kill=62, tkill=200, tgkill=234,
                                rt_sigqueueinfo=129, rt_tgsigqueueinfo=297, pidfd_send_signal=424,
                                io_uring_setup=425, clone3=435, ptrace=101)),
    "aarch64": (0xC00000B7, dict(socket=198, clone=220, kill=129, tkill=130, tgkill=131, rt_sigqueueinfo=138,
                                 rt_tgsigqueueinfo=240, pidfd_send_signal=424, io_uring_setup=425, clone3=435,
                                 ptrace=117)),
}


def _libc():
  import ctypes
  libc = ctypes.CDLL(None, use_errno=True)
  libc.syscall.restype = ctypes.c_long
  return ctypes, libc


def landlock_abi():
  """The kernel's Landlock ABI version, 0 when unavailable."""
  try:
    ctypes, libc = _libc()
  except (ImportError, OSError):
    return 0
  version = libc.syscall(ctypes.c_long(_LANDLOCK_CREATE), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
  return max(0, int(version))


def seccomp_arch():
  """The architecture key of ``_SECCOMP_ARCHES`` for this machine, or None."""
  machine = os.uname().machine
  return machine if machine in _SECCOMP_ARCHES else None


def apply_landlock(read_paths, write_paths, list_paths=()):
  """Restricts this process: read ``read_paths``, read/write ``write_paths``, list the folders under
  ``list_paths`` (names only), no TCP, signals and abstract sockets scoped to the process."""
  ctypes, libc = _libc()
  abi = landlock_abi()
  if abi < 1:
    raise OSError("Landlock is not available")
  handled = (1 << 13) - 1  # ABI 1: execute .. make_sym
  if abi >= 2:
    handled |= 1 << 13  # refer
  if abi >= 3:
    handled |= _FS_TRUNCATE
  if abi >= 5:
    handled |= _FS_IOCTL_DEV
  net = 3 if abi >= 4 else 0  # bind and connect TCP: no rule allows any port
  scoped = 3 if abi >= 6 else 0  # abstract unix sockets and signals stay inside the domain
  attr = struct.pack("<QQQ", handled, net, scoped)[:24 if abi >= 6 else (16 if abi >= 4 else 8)]
  buffer = ctypes.create_string_buffer(attr, len(attr))
  ruleset = libc.syscall(ctypes.c_long(_LANDLOCK_CREATE), buffer, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
  if ruleset < 0:
    raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
  file_rights = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
  read_rights = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
  try:
    rules = ([(p, _FS_READ_DIR) for p in list_paths] + [(p, read_rights) for p in read_paths]
             + [(p, handled) for p in write_paths])
    for path, rights in rules:
      try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
      except OSError:
        continue  # absent here (e.g. outside the namespace's root)
      try:
        if not os.path.isdir(path):
          rights &= file_rights
        rule = ctypes.create_string_buffer(struct.pack("<Qi", rights & handled, fd), 12)
        if libc.syscall(ctypes.c_long(_LANDLOCK_ADD_RULE), ctypes.c_int(ruleset), ctypes.c_int(1), rule,
                        ctypes.c_uint32(0)) < 0:
          raise OSError(ctypes.get_errno(), "landlock_add_rule failed for %s" % path)
      finally:
        os.close(fd)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
      raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
    if libc.syscall(ctypes.c_long(_LANDLOCK_RESTRICT), ctypes.c_int(ruleset), ctypes.c_uint32(0)) < 0:
      raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
  finally:
    os.close(ruleset)


def seccomp_program(arch, own_pid):
  """The BPF filter (list of (code, jt, jf, k)) of ``apply_seccomp``."""
  audit_arch, nr = _SECCOMP_ARCHES[arch]
  ld_abs, jeq, jset, jge, ret = 0x20, 0x15, 0x45, 0x35, 0x06
  allow, kill_process = 0x7FFF0000, 0x80000000
  def errno(code):
    return 0x00050000 | code
  eperm, eacces, enosys = 1, 13, 38
  arg0 = 16  # offset of the low 32 bits of args[0] in struct seccomp_data (little-endian)
  prog = [(ld_abs, 0, 0, 4), (jeq, 1, 0, audit_arch), (ret, 0, 0, kill_process), (ld_abs, 0, 0, 0)]
  if arch == "x86_64":  # the x32 ABI shares the architecture value: refuse it wholesale
    prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, kill_process)]
  for name in ("fork", "vfork", "io_uring_setup", "pidfd_send_signal", "tkill", "ptrace"):
    if name in nr:
      prog += [(jeq, 0, 1, nr[name]), (ret, 0, 0, errno(eperm))]
  prog += [(jeq, 0, 1, nr["clone3"]), (ret, 0, 0, errno(enosys))]  # glibc falls back to clone
  # clone: threads only (CLONE_THREAD set), no new processes.
  prog += [(jeq, 0, 4, nr["clone"]), (ld_abs, 0, 0, arg0), (jset, 0, 1, 0x10000), (ret, 0, 0, allow),
           (ret, 0, 0, errno(eperm))]
  # socket: AF_UNIX only (socket pairs); no network of any family.
  prog += [(jeq, 0, 4, nr["socket"]), (ld_abs, 0, 0, arg0), (jeq, 0, 1, 1), (ret, 0, 0, allow),
           (ret, 0, 0, errno(eacces))]
  # signals: only to this process (first argument: pid or tgid).
  for name in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
    prog += [(jeq, 0, 4, nr[name]), (ld_abs, 0, 0, arg0), (jeq, 0, 1, own_pid), (ret, 0, 0, allow),
             (ret, 0, 0, errno(eperm))]
  prog.append((ret, 0, 0, allow))
  return prog


def apply_seccomp():
  """Installs ``seccomp_program`` for this process and everything it starts (irreversible)."""
  ctypes, libc = _libc()
  arch = seccomp_arch()
  if arch is None:
    raise OSError("no seccomp filter for architecture %s" % os.uname().machine)
  prog = seccomp_program(arch, os.getpid())
  data = b"".join(struct.pack("<HBBI", *instruction) for instruction in prog)
  filters = ctypes.create_string_buffer(data, len(data))
  fprog = ctypes.create_string_buffer(struct.pack("<HxxxxxxQ", len(prog), ctypes.addressof(filters)), 16)
  if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
    raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
  if libc.prctl(_PR_SET_SECCOMP, 2, fprog, 0, 0) != 0:
    raise OSError(ctypes.get_errno(), "seccomp filter refused")


def confine(setup):
  """Limits, uid, seccomp and Landlock as the host asked; raises when any step fails."""
  import resource
  mib = 1 << 20
  def set_limit(which, soft, hard=None):
    hard = soft if hard is None else hard
    old_soft, old_hard = resource.getrlimit(which)
    if old_hard != resource.RLIM_INFINITY:
      soft, hard = min(soft, old_hard), min(hard, old_hard)
    resource.setrlimit(which, (soft, hard))
  limits = setup["limits"]
  set_limit(resource.RLIMIT_CORE, 0)
  set_limit(resource.RLIMIT_CPU, limits["cpu_s"], limits["cpu_s"] + 1)
  set_limit(resource.RLIMIT_FSIZE, limits["file_mb"] * mib)
  set_limit(resource.RLIMIT_NPROC, limits["nproc"])
  if setup["mode"] == "namespaces":  # root inside the new namespaces: drop to the fresh uid
    os.setgroups([])
    os.setgid(setup["uid"])
    os.setuid(setup["uid"])
  ctypes, libc = _libc()
  libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)  # no process of the same uid may read our memory
  if setup["seccomp"]:
    apply_seccomp()
  if setup["landlock"]:
    apply_landlock(setup["read_paths"], [setup["workdir"]] + ["/dev/null"], setup["list_paths"])
  set_limit(resource.RLIMIT_AS, limits["memory_mb"] * mib)
  os.chdir(setup["workdir"])
  os.umask(0o077)

