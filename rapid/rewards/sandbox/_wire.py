"""The sandbox's wire format for values: a JSON-able tagged tree of plain data (stdlib only: the sandbox child
imports it before any untrusted code runs, and the parent decodes with the same functions).

ints, floats, complex, str, bytes, bool, None, lists (and iterators, ranges, numpy arrays), tuples, dicts, sets and
frozensets travel; subclasses of the plain types arrive as the plain value; anything else arrives as an ``Opaque``
value that is equal to nothing, not even itself — so no custom ``__eq__`` survives the trip.
"""

_PLAIN = (bool, int, float, str, bytes, complex, type(None))


class Opaque:
    """A value of a type the wire format does not carry: equal to nothing, not even itself."""

    __slots__ = ("type_name",)

    def __init__(self, type_name):
        self.type_name = type_name

    def __eq__(self, other):
        return False

    __hash__ = object.__hash__

    def __repr__(self):
        return "<opaque %s>" % self.type_name


def to_wire(value, depth=0):
    """A JSON-able tagged tree of plain data; anything else becomes an opaque marker (equal to nothing)."""
    if depth > 64:
        raise ValueError("value nested too deeply")
    t = type(value)
    if t is bool or t is type(None) or t is str:
        return value
    if t is int:
        return ["i", str(value)]
    if t is float:
        return ["f", repr(value)]
    if t is complex:
        return ["c", repr(value.real), repr(value.imag)]
    if t is bytes:
        return ["b", value.hex()]
    if isinstance(value, dict):
        return ["d", [[to_wire(k, depth + 1), to_wire(v, depth + 1)] for k, v in dict.items(value)]]
    if isinstance(value, tuple):
        return ["t", [to_wire(v, depth + 1) for v in tuple.__iter__(value)]]
    if isinstance(value, (set, frozenset)):
        tag = "fs" if isinstance(value, frozenset) else "s"
        return [tag, [to_wire(v, depth + 1) for v in value]]
    if isinstance(value, (bool, int, float, str)):  # subclasses: keep the plain value only
        for base in (bool, int, float, str):
            if isinstance(value, base):
                return to_wire(base(value), depth)
    if isinstance(value, list) or hasattr(value, "__next__") or type(value).__name__ in (
            "range", "map", "filter", "zip", "reversed", "dict_keys", "dict_values", "dict_items", "deque"):
        return ["l", [to_wire(v, depth + 1) for v in value]]
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        plain = item()
        if type(plain) in _PLAIN:
            return to_wire(plain, depth)
    tolist = getattr(value, "tolist", None)  # numpy arrays
    if callable(tolist) and type(value).__name__ == "ndarray":
        return to_wire(tolist(), depth)
    return ["x", type(value).__name__]


def from_wire(w):
    """Decode one value of ``to_wire``'s format; anything malformed raises ValueError."""
    if w is None or isinstance(w, (bool, str)):
        return w
    if not isinstance(w, list) or not w or not isinstance(w[0], str):
        raise ValueError("malformed value %.80r" % (w,))
    tag, rest = w[0], w[1:]
    try:
        if tag == "i":
            return int(rest[0])
        if tag == "f":
            return float(rest[0])
        if tag == "c":
            return complex(float(rest[0]), float(rest[1]))
        if tag == "b":
            return bytes.fromhex(rest[0])
        if tag == "x":
            return Opaque(str(rest[0]))
        items = rest[0]
        if tag == "d":
            return {from_wire(k): from_wire(v) for k, v in items}
        kinds = {"l": list, "t": tuple, "s": set, "fs": frozenset}
        return kinds[tag]([from_wire(v) for v in items])
    except (IndexError, KeyError, TypeError) as exc:
        raise ValueError("malformed value %.80r" % (w,)) from exc
