"""The inert pickle interpreter: same values as pickle for plain data in every
protocol, and nothing executed for hostile pickles."""

import collections
import io
import os
import pickle
import pickletools

import pytest

from ckptfs.limits import LIMITS
from ckptfs.pickle.inert import Call, Global, InertUnpickler, PickleError

PLAIN = {
    "list": [1, 2.5, "x", b"bytes", None, True, False, complex(1, 2), bytearray(b"ba")],
    "tuple": (1, (2, 3), ()),
    "set": {1, 2},
    "frozen": frozenset([3]),
    7: {"nested": [{}], (1, 2): "tuple key"},
    "big": 2**100,
    "neg": -5,
    "unicode": "ünïcödé",
}


@pytest.mark.parametrize("protocol", range(0, 6))
def test_plain_data_matches_pickle(protocol):
    data = pickle.dumps(PLAIN, protocol=protocol)
    assert InertUnpickler(data).load() == pickle.loads(data)


def test_shared_references_stay_shared():
    inner = [1, 2]
    got = InertUnpickler(pickle.dumps({"a": inner, "b": inner}, protocol=2)).load()
    assert got["a"] is got["b"]


def _hostile(path):
    """Pickles that would run code under pickle.load, one per mechanism."""

    class Reduce:
        def __reduce__(self):
            return (os.system, (f"touch {path}",))

    class NewObj:
        def __reduce__(self):
            return (collections.OrderedDict.__new__, (collections.OrderedDict,))  # harmless stand-in for cls.__new__

    reduce_ = pickle.dumps(Reduce(), protocol=2)
    inst = b"(S'touch " + str(path).encode() + b"'\nios\nsystem\n."
    obj = b"(cos\nsystem\nS'touch " + str(path).encode() + b"'\no."
    build = b"cbuiltins\nexec\n)R}S'x'\nS'y'\nsb."
    newobj_ex = pickle.dumps(NewObj(), protocol=4)
    ext = b"\x80\x02\x82\x01)R."
    return {"REDUCE": reduce_, "INST": inst, "OBJ": obj, "BUILD": build, "NEWOBJ": newobj_ex, "EXT1": ext}


def test_hostile_pickles_run_nothing(tmp_path):
    marker = tmp_path / "pwned"
    for mechanism, data in _hostile(marker).items():
        pickletools.dis(data, out=io.StringIO())  # each is a valid pickle
        u = InertUnpickler(data)
        result = u.load()
        assert isinstance(result, Call), mechanism
        assert u.globals, mechanism
        assert not marker.exists(), mechanism
    u = InertUnpickler(_hostile(marker)["INST"])
    call = u.load()
    assert call.func == Global("os", "system") and call.args == (f"touch {marker}",)
    assert u.globals == [Global("os", "system")]


def test_malformed_pickles_raise_pickle_error():
    for data in (b"", b"\x80\x02", b"\x80\x02]q\x00(K\x01", b"\x80\x02\xff.", b"\x80\x02h\x05.", b"\x80\x02a."):
        with pytest.raises(PickleError):
            InertUnpickler(data).load()


def test_deep_nesting_is_refused_without_recursion(monkeypatch):
    data = b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b"."
    with pytest.raises(PickleError, match="nested deeper than 200"):
        InertUnpickler(data).load()
    monkeypatch.setattr(LIMITS, "pickle_nesting", 200_000)  # what -o max_pickle_nesting=200000 sets
    result = InertUnpickler(data).load()
    depth = 0
    while result:
        result = result[0]
        depth += 1
    assert depth == 99_999


def test_nesting_counts_the_longest_path_and_a_shared_list_once():
    shared = ["leaf"]
    for _ in range(150):
        shared = [shared, shared]  # 2^150 paths, 151 levels: loads at once
    loaded = InertUnpickler(pickle.dumps(shared, protocol=2)).load()
    assert loaded[0] is loaded[1] and loaded[0][0] is loaded[1][1]  # shared as it was, not copied out
    deeper = [shared]
    for _ in range(60):
        deeper = [deeper]
    with pytest.raises(PickleError, match="nested deeper than 200"):
        InertUnpickler(pickle.dumps(deeper, protocol=2)).load()


def test_a_key_of_shared_tuples_is_kept_without_hashing_it_out():
    key = ("x",)
    for _ in range(64):
        key = (key, key)  # hashing it would visit 2^64 values
    # {key: 1, "b": 2}, spelled by hand: Python itself would hash the key to build the dict
    data = b"\x80\x02}(" + pickle.dumps(key, protocol=2)[2:-1] + b"K\x01X\x01\x00\x00\x00bK\x02u."
    result = InertUnpickler(data).load()
    (placeholder, one), (b, two) = result.items()
    assert (one, b, two) == (1, "b", 2) and placeholder.key[0][1] is placeholder.key[1][0]
    assert len(repr(placeholder)) < 100


def test_many_distinct_globals_cost_linear_time():
    ops = b"".join(b"c" + f"m{i}\nn\n".encode() + b"0" for i in range(200_000))
    unpickler = InertUnpickler(b"\x80\x02" + ops + b"N.")
    assert unpickler.load() is None and len(unpickler.globals) == 200_000


class _Point:
    def __init__(self, x):
        self.x = x


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_many_shared_objects_match_pickle(protocol):
    """Over 256 memo entries: LONG_BINGET/LONG_BINPUT and MEMOIZE paths."""
    items = [f"name{i}" for i in range(600)]
    data = pickle.dumps({"first": items, "again": items[::-1], "ints": list(range(-300, 70000, 97))}, protocol=protocol)
    assert InertUnpickler(data).load() == pickle.loads(data)


def test_every_truncation_is_a_pickle_error():
    data = pickle.dumps({"a": [_Point(1), _Point(2)], "b": ("x" * 300, 2**40, -7, 1.5), 3: {"k": None}}, protocol=4)
    assert isinstance(InertUnpickler(data).load()["a"][0], Call)
    for cut in range(len(data) - 1):
        with pytest.raises(PickleError):
            InertUnpickler(data[:cut]).load()


def test_unhashable_and_misplaced_setitems():
    assert InertUnpickler(b"\x80\x02}(]K\x01u.").load() == {(): 1}  # a list key is kept as a tuple
    with pytest.raises(PickleError):
        InertUnpickler(b"\x80\x02(}K\x01K\x02u.").load()  # SETITEMS with nothing below its mark
