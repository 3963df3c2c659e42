"""The fast path's per-query part on a cached shared pool, compiled from ``pool_kernel.c`` for this CPU.

``PoolScorer`` scores a cached pool here on a CPU backend: the calling thread
and ``threads() - 1`` spinning workers split the (query, graph) pairs, with no
XLA dispatch, hand-off or wake-up (which cost more than a small call's work).
The kernel computes ``gcn_fast.score_shared_pool``'s function (tests keep them
within 1e-5).

The C source is compiled on first use with the system C compiler (``$CC``,
else ``cc``, ``gcc`` or ``clang``) for the model's shape and ``-march=native``,
and cached under ``$HIERAMAS_NATIVE_CACHE`` (default
``~/.cache/hieramas_jax/native``), keyed by source, shape, compiler and CPU.
Without a compiler, or with ``HIERAMAS_NATIVE_SCORING=0``, scoring stays on
NumPy / XLA and ``unavailable_reason()`` says why (warned once).
``HIERAMAS_NATIVE_THREADS`` sets the thread count (default: the CPUs this
process may run on), ``HIERAMAS_NATIVE_SPIN_US`` how long idle workers spin
before they sleep (default 200).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings

import numpy as np

_SOURCE = pathlib.Path(__file__).with_name("pool_kernel.c")
_DEFAULT_SPIN_US = 200.0
_lock = threading.Lock()
# hieramas_score_objects's statuses (pool_kernel.c).
_SCORED, _NO_FLOAT32_BUFFER, _OUT_OF_MEMORY = 0, 1, 4
_libraries: dict[tuple, ctypes.CDLL | None] = {}  # shape -> library (None: could not be built)
_reasons: dict[tuple, str] = {}
_warned: set[str] = set()


class _Model(ctypes.Structure):
  """``model_t`` of pool_kernel.c."""
  _fields_ = [("num_graphs", ctypes.c_int64), ("query_dim", ctypes.c_int64)] + [
      (name, ctypes.c_void_p) for name in ("query_kernel", "role_term", "col_sum", "s_t", "layer_kernel",
                                           "layer_bias", "weights", "head_kernel", "head_bias", "out_kernel")
  ] + [("out_bias", ctypes.c_float)]


def enabled() -> bool:
  """False when ``HIERAMAS_NATIVE_SCORING`` is 0/false/off/no."""
  return os.environ.get("HIERAMAS_NATIVE_SCORING", "1").strip().lower() not in ("0", "false", "off", "no")


def threads() -> int:
  """Threads a native call uses, the caller included (``HIERAMAS_NATIVE_THREADS``, else the usable CPUs)."""
  value = os.environ.get("HIERAMAS_NATIVE_THREADS")
  if value:
    try:
      count = int(value)
    except ValueError:
      raise ValueError(f"HIERAMAS_NATIVE_THREADS={value!r} is not a whole number; set it to a thread count "
                       "such as 2, or unset it to use every CPU this process may run on") from None
    if count < 1:
      raise ValueError(f"HIERAMAS_NATIVE_THREADS={count} must be at least 1")
    return count
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def _spin_us() -> float:
  """How long idle workers spin before they sleep (``HIERAMAS_NATIVE_SPIN_US``, default 200)."""
  value = os.environ.get("HIERAMAS_NATIVE_SPIN_US", str(_DEFAULT_SPIN_US))
  try:
    spin = float(value)
  except ValueError:
    spin = -1.0
  if not spin >= 0:
    raise ValueError(f"HIERAMAS_NATIVE_SPIN_US={value!r} must be a number of microseconds >= 0, such as 200")
  return spin


def _compiler() -> str | None:
  if os.environ.get("CC"):
    return shutil.which(os.environ["CC"].split()[0]) and os.environ["CC"]
  return next((name for name in ("cc", "gcc", "clang") if shutil.which(name)), None)


def _cpu_identity() -> str:
  """What -march=native depends on: the CPU model and its feature flags (a cache shared by several machines)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      lines = [line for line in f if line.startswith(("model name", "flags", "Features", "CPU part"))]
    return "".join(sorted(set(lines)))
  except OSError:
    return platform.processor() + platform.machine()


def _cache_dir() -> pathlib.Path:
  configured = os.environ.get("HIERAMAS_NATIVE_CACHE")
  if configured:
    return pathlib.Path(configured)
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "hieramas_jax" / "native"


def _build(shape: tuple[int, int, int, int]) -> pathlib.Path:
  """The compiled library for ``shape`` = (roles, hidden, mlp, hidden layers): cached, else compiled now."""
  compiler = _compiler()
  if compiler is None:
    raise RuntimeError("no C compiler found (set $CC, or install cc, gcc or clang)")
  source = _SOURCE.read_bytes()
  defines = [f"-D{name}={value}" for name, value in zip(("NUM_ROLES", "HIDDEN", "MLP", "NUM_LAYERS"), shape)]
  try:
    version = subprocess.run(compiler.split() + ["--version"], capture_output=True, text=True, timeout=60).stdout
  except (OSError, subprocess.SubprocessError) as err:
    raise RuntimeError(f"the C compiler {compiler!r} could not run: {err}") from None
  key = hashlib.sha256(b"\0".join([source, " ".join(defines).encode(), version.encode(),
                                   _cpu_identity().encode()])).hexdigest()[:24]
  directory = _cache_dir()
  target = directory / f"pool_kernel_{key}.so"
  if target.exists():
    return target
  try:
    directory.mkdir(parents=True, exist_ok=True)
    output_dir = directory
  except OSError:
    output_dir = pathlib.Path(tempfile.gettempdir())
    target = output_dir / target.name
    if target.exists():
      return target
  # Flags tried in order: -march=native is not accepted by every compiler and target (then -mcpu=native).
  errors = []
  for arch in (["-march=native"], ["-mcpu=native"], []):
    fd, partial = tempfile.mkstemp(prefix=target.stem, suffix=".so.partial", dir=output_dir)
    os.close(fd)
    command = compiler.split() + ["-O3", *arch, "-ffp-contract=fast", "-fno-math-errno", "-fPIC", "-shared",
                                  "-pthread", *defines, str(_SOURCE), "-o", partial]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode == 0:
      os.replace(partial, target)  # atomic: processes compiling at once each publish a whole library
      return target
    os.unlink(partial)
    errors.append(f"{' '.join(command)}: {result.stderr.strip()[-400:]}")
  raise RuntimeError("compiling pool_kernel.c failed:\n" + "\n".join(errors))


def library(shape: tuple[int, int, int, int]) -> ctypes.CDLL | None:
  """The kernel library for (roles, hidden, mlp, hidden layers), or None (``unavailable_reason`` says why)."""
  shape = tuple(int(x) for x in shape)
  if not enabled():
    return None
  with _lock:
    if shape not in _libraries:
      try:
        # PyDLL: the GIL is held on entry, for the buffer protocol; the kernel releases it while it computes.
        lib = ctypes.PyDLL(str(_build(shape)))
        lib.hieramas_score_objects.argtypes = [ctypes.c_void_p, ctypes.py_object, ctypes.py_object]
        lib.hieramas_score_objects.restype = ctypes.c_int
        api = ctypes.pythonapi
        lib.hieramas_bind_python(*(ctypes.cast(getattr(api, name), ctypes.c_void_p) for name in (
            "PyObject_GetBuffer", "PyBuffer_Release", "PyErr_Clear", "PyEval_SaveThread", "PyEval_RestoreThread")))
        lib.hieramas_configure.argtypes = [ctypes.c_int, ctypes.c_double]
        lib.hieramas_configure.restype = ctypes.c_int
        lib.hieramas_scratch_bytes.argtypes = [ctypes.c_int64]
        lib.hieramas_scratch_bytes.restype = ctypes.c_int64
        built = (ctypes.c_int64 * 5)()
        lib.hieramas_shape(built)
        if tuple(built[:4]) != shape:
          raise RuntimeError(f"the library was built for shape {tuple(built[:4])}, not {shape}")
        spin_us = _spin_us()
        lib.threads = lib.hieramas_configure(threads(), spin_us * 1e-6)
        lib.vector_width = built[4]
        _libraries[shape] = lib
      except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        _libraries[shape] = None
        _reasons[shape] = str(err)
        message = (f"hieramas: native pool scoring is unavailable ({err}); cached pools are scored with "
                   "NumPy / XLA instead, which is slower for small calls. Install a C compiler, or set "
                   "HIERAMAS_NATIVE_SCORING=0 to silence this.")
        if message not in _warned:
          _warned.add(message)
          warnings.warn(message, RuntimeWarning, stacklevel=3)
    return _libraries[shape]


def unavailable_reason(shape: tuple[int, int, int, int]) -> str | None:
  """Why ``library(shape)`` is None (disabled, no compiler, a compile error), or None when it is available."""
  if not enabled():
    return "disabled by HIERAMAS_NATIVE_SCORING=0"
  return None if library(shape) is not None else _reasons.get(tuple(int(x) for x in shape))


def _address(array: np.ndarray) -> int:
  return array.ctypes.data


def _aligned(array) -> np.ndarray:
  """A float32 C-contiguous copy of ``array`` starting on a 64-byte boundary.

  The kernel's vector loads are 64 bytes wide: a misaligned array splits them over two cache lines (a pool
  measured up to 1.2x slower, depending on where NumPy placed it).
  """
  shape = np.shape(array)
  size = int(np.prod(shape, dtype=np.int64))
  raw = np.empty(size + 16, np.float32)
  offset = (-_address(raw) % 64) // 4
  out = raw[offset:offset + size].reshape(shape)
  out[...] = array
  return out


def native_weights(tensors: dict) -> dict:
  """The parameter arrays the kernel reads, aligned: made once per parameters and shared by their pools.

  ``tensors`` are ``gcn_fast.host_tensors`` (NumPy ``scoring_tensors``).
  """
  hidden = tensors["role_part"].shape[1]
  layers = tensors["layers"]
  weights = {name: _aligned(value) for name, value in {
      "query_kernel": tensors["query_kernel"],
      "layer_kernel": np.stack([k for k, _ in layers]) if layers else np.zeros((1, hidden, hidden)),
      "layer_bias": np.stack([b for _, b in layers]) if layers else np.zeros((1, hidden)),
      "head_kernel": tensors["head_kernel"],
      "head_bias": tensors["head_bias"],
      "out_kernel": tensors["out_kernel"],
  }.items()}
  weights["in_bias"] = np.asarray(tensors["in_bias"], np.float32)
  weights["out_bias"] = float(tensors["out_bias"])
  return weights


class NativePool:
  """One cached pool bound to one model's weights: ``__call__(query [B, D]) -> logits [B, K]`` (NumPy).

  ``weights`` are ``native_weights(host tensors)``; ``pool`` a ``prepare_shared_pool``
  result (any block layout) for ``num_graphs`` graphs. The arrays the kernel
  reads are held here. A call reads the query's own buffer (a jax array on the
  CPU or a NumPy array; others are converted) and writes a new logits array. Calls
  from several threads run one at a time (the kernel's workers serve one call at a
  time); other Python threads run meanwhile (the kernel releases the GIL).
  """

  def __init__(self, lib: ctypes.CDLL, weights: dict, pool: dict, num_graphs: int):
    unblock = lambda x: np.asarray(x, np.float32).reshape((-1,) + x.shape[2:])[:num_graphs]
    held = dict(weights) | {name: _aligned(value) for name, value in {
        "role_term": unblock(pool["role_term"]) + weights["in_bias"],
        "col_sum": unblock(pool["col_sum"]),
        "s_t": unblock(pool["s"]).transpose(0, 2, 1),
        "weights": np.asarray(pool["weights"], np.float32).reshape(-1),
    }.items()}
    self._held = held
    self._lib = lib
    self.num_graphs = num_graphs
    self.query_dim = held["query_kernel"].shape[0]
    self._model = _Model(num_graphs, self.query_dim, *(_address(held[name]) for name, _ in _Model._fields_[2:-1]),
                         weights["out_bias"])
    self._model_address = ctypes.addressof(self._model)
    self._score_objects = lib.hieramas_score_objects

  def scratch_bytes(self, batch: int) -> int:
    """Working memory of a call of ``batch`` queries (threads' activations and the projections), in bytes."""
    return int(self._lib.hieramas_scratch_bytes(batch))

  def __call__(self, query_emb) -> np.ndarray:
    shape = getattr(query_emb, "shape", None)
    if shape is None:
      query_emb = np.asarray(query_emb)
      shape = query_emb.shape
    if len(shape) != 2 or shape[1] != self.query_dim:
      raise ValueError(f"query embeddings have shape {tuple(shape)}; this pool scores [B, {self.query_dim}]")
    out = np.empty((shape[0], self.num_graphs), np.float32)
    if shape[0] == 0 or self.num_graphs == 0:
      return out
    # The kernel reads the query's own buffer (a jax array on the CPU or a NumPy array: no copy) and writes out.
    status = self._score_objects(self._model_address, query_emb, out)
    if status == _NO_FLOAT32_BUFFER:  # another dtype, a strided view, a sharded array, a list: converted
      status = self._score_objects(self._model_address, np.ascontiguousarray(query_emb, np.float32), out)
    if status != _SCORED:
      raise (MemoryError if status == _OUT_OF_MEMORY else RuntimeError)(
          f"the native pool kernel failed with status {status} on a query of shape {tuple(shape)}")
    return out
