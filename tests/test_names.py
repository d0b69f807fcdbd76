"""The name escape of docs/layout.md: injective, reversible, valid file names."""

import pytest

from ckptfs.tree import names


@pytest.mark.parametrize(
    "part, expected",
    [
        ("weight", "weight"),
        ("a/b", "a%2Fb"),
        ("100%", "100%25"),
        (".hidden", "%2Ehidden"),
        (".", "%2E"),
        ("..", "%2E."),
        ("", "%"),
        ("nul\0byte", "nul%00byte"),
        ("ünïcode", "ünïcode"),
        ("in.side", "in.side"),
    ],
)
def test_escape_and_back(part, expected):
    assert names.escape(part) == expected
    assert names.unescape(expected) == part


def test_escaped_dots_keep_a_dotted_key_whole():
    name = names.escape("a.b", ".npy", dots=True)
    assert name == "a%2Eb.npy"
    assert "/" not in name
    assert names.unescape(name[: -len(".npy")]) == "a.b"


def test_tensor_names_split_at_dots():
    assert names.tensor_path("encoder.layers.0.weight") == ["encoder", "layers", "0", "weight.npy"]
    assert names.tensor_path("a..b") == ["a", "%", "b.npy"]
    assert names.tensor_path(".x") == ["%", "x.npy"]
    assert names.tensor_path("x.") == ["x", "%.npy"]
    assert names.tensor_path("a/b.c") == ["a%2Fb", "c.npy"]


def test_flat_names_never_collide():
    keys = ["a", "a.b", "a.b.c", "a..b", "a.", ".a", "a/b", "a%2Fb", "a%", "%", "", "x.npy", "x"]
    paths = ["/".join(names.tensor_path(k)) for k in keys]
    assert len(set(paths)) == len(keys)
    # no path is a prefix directory of a tensor file of another key
    files = set(paths)
    dirs = {p.rsplit("/", 1)[0] for p in paths if "/" in p}
    assert not files & dirs


def test_long_names_are_shortened_within_the_limit_and_distinct():
    a, b = "x" * 300, "x" * 299 + "y"
    na, nb = names.escape(a, ".npy"), names.escape(b, ".npy")
    assert len(na.encode()) <= 255 and len(nb.encode()) <= 255
    assert na != nb and na.endswith(".npy") and "%#" in na
    with pytest.raises(ValueError, match="shortened"):
        names.unescape(na)
    multibyte = "é" * 200  # 400 bytes: must not cut a character in half
    assert len(names.escape(multibyte).encode()) <= 255
    names.escape(multibyte).encode("utf-8")
    escaped_run = "%" * 200  # 600 bytes once escaped: must not cut an escape in half
    shortened = names.escape(escaped_run)
    head = shortened.split("%#")[0]
    assert names.unescape(head) == "%" * (len(head) // 3)


def test_non_string_keys():
    siblings = frozenset([0, 1, "0"])
    assert names.key_name(0, siblings) == "0"
    assert names.key_name("0", siblings) == "%30"
    assert names.key_name("0") == "0"  # no int sibling: no escape needed
    assert names.key_name(None) == "%=None"
    assert names.key_name(True) == "%=True"
    assert names.key_name((1, "a/b")) == "%=(1, 'a%2Fb')"
    assert names.key_name(1.5, suffix=".npy") == "%=1.5.npy"
    assert names.key_name("%=x") == "%25=x"
    for key in (0, 17, -3, None, True, False, 1.5, (1, "a/b"), b"\x00k"):
        assert names.key_from_name(names.key_name(key, siblings), int_keys=True) == key
    assert names.key_from_name("%30", int_keys=True) == "0"
    assert names.key_from_name("0", int_keys=False) == "0"
    assert names.key_from_name("%25=x") == "%=x"


def test_member_names_keep_dots_and_escape_the_reserved():
    assert names.file_parts("tokenizer/.hidden") == ["tokenizer", ".hidden"]
    assert names.file_parts(".ckptfs") == ["%2Eckptfs"]
    assert names.file_parts("sub/.ckptfs") == ["sub", ".ckptfs"]
    assert names.file_parts("50%.txt") == ["50%25.txt"]


def test_escape_first_makes_a_distinct_twin():
    assert names.escape_first("bert") == "%62ert"
    assert names.unescape("%62ert") == "bert"
    assert names.escape_first("%62ert") == "%2562ert"
