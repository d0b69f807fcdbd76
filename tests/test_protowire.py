"""formats/protowire.py against the protobuf library's own encoder: every
field of a message it wrote found where it lies, values with their sign,
and malformed messages refused in one line."""

import numpy as np
import pytest
from onnx import TensorProto, helper

from ckptfs.errors import FormatError
from ckptfs.formats import protowire
from tests.fuzz.targets import MemorySource


def _tensor_message() -> bytes:
    tensor = helper.make_tensor("w", TensorProto.FLOAT, [2, 3], np.arange(6, dtype=np.float32).tobytes(), raw=True)
    tensor.dims[0] = 2  # int64 dims: a varint each
    tensor.doc_string = "x" * 200  # a length over 127: a two-byte length
    return tensor.SerializeToString()


def test_fields_are_where_the_library_wrote_them():
    data = _tensor_message()
    found = list(protowire.fields(MemorySource(data)))
    by_number = {}
    for f in found:
        by_number.setdefault(f.number, []).append(f)
    # TensorProto (proto2, so repeated fields unpacked): dims = 1, data_type = 2, name = 8, raw_data = 9, doc_string = 12
    assert [(f.wire, f.value) for f in by_number[1]] == [(protowire.VARINT, 2), (protowire.VARINT, 3)]
    assert by_number[2][0].value == TensorProto.FLOAT
    name = by_number[8][0]
    assert data[name.offset : name.end] == b"w"
    raw = by_number[9][0]
    assert data[raw.offset : raw.end] == np.arange(6, dtype=np.float32).tobytes()
    assert by_number[12][0].value == 200
    assert found[-1].end == len(data)


def test_packed_repeated_fields():
    shape = helper.make_attribute("shape", [5, -1, 7])  # repeated int64 ints = 8
    data = shape.SerializeToString()
    values = []
    for f in protowire.fields(MemorySource(data)):
        if f.number == 8 and f.wire == protowire.LEN:
            values += protowire.packed_varints(data[f.offset : f.end], "m", f.offset)
        elif f.number == 8:
            values.append(f.value)
    assert [protowire.signed64(v) for v in values] == [5, -1, 7]


def test_signed_varints_and_fixed_fields():
    attr = helper.make_attribute("axis", -3)  # int64 field i = 3
    floats = helper.make_attribute("alpha", 0.5)  # float field f = 2 (I32)
    ints = {f.number: f for f in protowire.fields(MemorySource(attr.SerializeToString()))}
    assert protowire.signed64(ints[3].value) == -3 == ints[3].signed
    fixed = {f.number: f for f in protowire.fields(MemorySource(floats.SerializeToString()))}
    assert fixed[2].wire == protowire.I32
    assert np.frombuffer(fixed[2].value.to_bytes(4, "little"), np.float32)[0] == 0.5


def test_a_field_read_in_small_steps_across_windows(monkeypatch):
    data = _tensor_message()
    monkeypatch.setattr(protowire, "STEP", 3)  # every varint straddles a window
    small = [(f.number, f.value, f.offset) for f in protowire.fields(MemorySource(data))]
    monkeypatch.setattr(protowire, "STEP", 1 << 16)
    assert small == [(f.number, f.value, f.offset) for f in protowire.fields(MemorySource(data))]


def test_encoders_match_the_library():
    data = _tensor_message()
    raw = next(f for f in protowire.fields(MemorySource(data)) if f.number == 9)
    head = protowire.encode_len(9, raw.value)
    assert data[raw.offset - len(head) : raw.offset] == head
    for value in (0, 1, 127, 128, 300, 1 << 35, (1 << 64) - 1):
        assert protowire.decode_varint(protowire.encode_varint(value), 0, "m", 0) == (value, len(protowire.encode_varint(value)))


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"\x4a\x10abc", "claims 16 bytes, past its message"),  # raw_data claiming more than is left
        (b"\x08" + b"\xff" * 11, "longer than 10 bytes"),
        (b"\x08\x80", "truncated"),
        (b"\x0b", "wire type 3"),
        (b"\x00\x01", "field number 0"),
        (b"\x0d\x01\x02", "truncated at offset 1"),
    ],
)
def test_malformed_messages_are_one_line(data, problem):
    with pytest.raises(FormatError, match=problem) as raised:
        list(protowire.fields(MemorySource(data, "model.onnx")))
    assert str(raised.value).startswith("model.onnx: ")


def test_a_message_outside_the_file():
    with pytest.raises(FormatError, match="outside the file"):
        list(protowire.fields(MemorySource(b"\x08\x01"), 0, 5))
