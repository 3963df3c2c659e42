"""The value codec between the sandboxed program, the test driver and the host.

JSON with tags for what JSON lacks. A dict is always tagged, so an untagged
dict is malformed; decoding builds exactly the built-in types (int, float, str,
bool, None, list, tuple, dict, set, frozenset, bytes, complex) and refuses
anything else.

Runs inside the sandbox (see ``bootstrap``): standard library only, Python 3.8
syntax. The host imports it too, to decode the driver's outputs.
"""

import json

_INT_HEX_BITS = 12000  # above this, ints travel as hex (decimal str() is capped at 4300 digits)


def encode_value(value, depth=0):
  """Tagged JSON form of a value of built-in types (raises TypeError otherwise)."""
  if depth > 200:
    raise TypeError("value nested too deeply")
  kind = type(value)
  if value is None or kind is bool or kind is str:
    return value
  if kind is int:
    if value.bit_length() > _INT_HEX_BITS:
      return {"__int__": hex(value)}
    return value
  if kind is float:
    if value != value or value in (float("inf"), float("-inf")):
      return {"__float__": repr(value)}
    return value
  if kind is list:
    return [encode_value(v, depth + 1) for v in value]
  if kind is tuple:
    return {"__tuple__": [encode_value(v, depth + 1) for v in value]}
  if kind is set or kind is frozenset:
    return {"__set__" if kind is set else "__frozenset__": [encode_value(v, depth + 1) for v in value]}
  if isinstance(value, dict) and type(kind) is type and kind.__module__ in ("builtins", "collections"):
    # Counter, OrderedDict and defaultdict travel as dicts (their values, not their classes).
    return {"__dict__": [[encode_value(k, depth + 1), encode_value(v, depth + 1)] for k, v in dict.items(value)]}
  if kind is complex:
    return {"__complex__": [repr(value.real), repr(value.imag)]}
  if kind is bytes:
    return {"__bytes__": value.hex()}
  raise TypeError("a value of type %s cannot leave the sandbox; return built-in types" % kind.__name__)


class Malformed(ValueError):
  """A message that does not decode to plain values."""


def decode_value(value, depth=0):
  """Plain built-in values from ``encode_value``'s form; refuses anything else."""
  if depth > 200:
    raise Malformed("value nested too deeply")
  kind = type(value)
  if value is None or kind is bool or kind is str or kind is int:
    return value
  if kind is float:
    return value
  if kind is list:
    return [decode_value(v, depth + 1) for v in value]
  if kind is not dict or len(value) != 1:
    raise Malformed("unexpected %s in a value" % kind.__name__)
  (tag, body), = value.items()
  try:
    if tag == "__tuple__" and type(body) is list:
      return tuple(decode_value(v, depth + 1) for v in body)
    if tag in ("__set__", "__frozenset__") and type(body) is list:
      items = [decode_value(v, depth + 1) for v in body]
      return set(items) if tag == "__set__" else frozenset(items)
    if tag == "__dict__" and type(body) is list:
      result = {}
      for pair in body:
        if type(pair) is not list or len(pair) != 2:
          raise Malformed("a dict item is not a pair")
        result[decode_value(pair[0], depth + 1)] = decode_value(pair[1], depth + 1)
      return result
    if tag == "__float__" and body in ("nan", "inf", "-inf"):
      return float(body)
    if tag == "__int__" and type(body) is str:
      return int(body, 16)
    if tag == "__complex__" and type(body) is list and len(body) == 2 and all(type(b) is str for b in body):
      return complex(float(body[0]), float(body[1]))
    if tag == "__bytes__" and type(body) is str:
      return bytes.fromhex(body)
  except TypeError as exc:  # an unhashable set member or dict key
    raise Malformed(str(exc))
  except ValueError as exc:
    raise Malformed(str(exc))
  raise Malformed("unknown tag %r" % (tag,))


def canonical_json(value):
  """Encoding in which equal values (sets and dicts in any order) give equal text."""
  def order(encoded):
    if type(encoded) is list:
      return [order(v) for v in encoded]
    if type(encoded) is dict:
      (tag, body), = encoded.items()
      if tag in ("__set__", "__frozenset__", "__dict__"):
        return {tag: sorted((order(v) for v in body), key=lambda v: json.dumps(v, sort_keys=True))}
      if type(body) is list:
        return {tag: [order(v) for v in body]}
    return encoded
  return json.dumps(order(encode_value(value)), sort_keys=True)

