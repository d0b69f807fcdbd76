"""ONNX models for the tests, written with the `onnx` package: a small
Gemm model whose initializers hold every way ONNX stores values (raw_data,
float_data, double_data, int32_data holding float16/bfloat16 bits, bools
and small integers, int64_data, uint64_data), saved inline or with its
weights in external data files. `python -m tests.onnx_models torch OUT`
exports a torch model with torch.onnx.export (run apart: torch warns)."""

from __future__ import annotations

import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WEIGHT = np.random.default_rng(30).standard_normal((3, 4)).astype(np.float32)
BIAS = np.array([0.5, -1.0, 2.0], np.float32)
METADATA = {"author": "ckptfs tests", "license": "mit"}


def _typed() -> list[onnx.TensorProto]:
    """Initializers in typed fields, as helper.make_tensor writes them (vals, not raw)."""
    bf16 = np.array([1.5, -3.25, 0.0078125], ml_dtypes.bfloat16)
    return [
        helper.make_tensor("typed.f32", TensorProto.FLOAT, [2, 2], [1.25, -2.5, 3e-8, 7.0]),
        helper.make_tensor("typed.f64", TensorProto.DOUBLE, [3], [1e300, -0.5, 2.0]),
        helper.make_tensor("typed.f16", TensorProto.FLOAT16, [2, 2], np.array([1.5, -2, 65504, 6e-8], np.float16)),
        helper.make_tensor("typed.bf16", TensorProto.BFLOAT16, [3], bf16.astype(np.float32).tolist()),
        helper.make_tensor("typed.i8", TensorProto.INT8, [4], [-1, 2, -128, 127]),
        helper.make_tensor("typed.u8", TensorProto.UINT8, [2], [0, 255]),
        helper.make_tensor("typed.i16", TensorProto.INT16, [2], [-32768, 7]),
        helper.make_tensor("typed.i32", TensorProto.INT32, [3], [-(2**31), 0, 2**31 - 1]),
        helper.make_tensor("typed.i64", TensorProto.INT64, [3], [-(2**63), 5, 2**63 - 1]),
        helper.make_tensor("typed.u64", TensorProto.UINT64, [2], [2**64 - 1, 3]),
        helper.make_tensor("typed.u32", TensorProto.UINT32, [2], [2**32 - 1, 3]),
        helper.make_tensor("typed.bool", TensorProto.BOOL, [3], [True, False, True]),
        helper.make_tensor("typed.u16", TensorProto.UINT16, [2], [65535, 1]),
        helper.make_tensor("typed.f8", TensorProto.FLOAT8E4M3FN, [3], [1.0, -2.0, 448.0]),
        helper.make_tensor("typed.e8m0", TensorProto.FLOAT8E8M0, [2], [1.0, 0.5]),
        helper.make_tensor("typed.c64", TensorProto.COMPLEX64, [2], [1 + 2j, 3 - 4j]),
        helper.make_tensor("typed.c128", TensorProto.COMPLEX128, [1], [1 + 2j]),
        helper.make_tensor("typed.empty", TensorProto.FLOAT, [0, 3], []),
    ]


def _raw() -> list[onnx.TensorProto]:
    """Initializers in raw_data, as numpy_helper.from_array writes them (the same each time)."""
    rng = np.random.default_rng(31)
    arrays = {"raw.f16": rng.standard_normal((5, 3)).astype(np.float16),
              "raw.bf16": rng.standard_normal(6).astype(ml_dtypes.bfloat16),
              "raw.i8": rng.integers(-128, 127, (4, 4), dtype=np.int8),
              "raw.i64": rng.integers(-(2**62), 2**62, 3, dtype=np.int64),
              "raw.bool": np.array([True, False, False, True]),
              "raw.f8": np.array([1.0, -2.0, 0.5], ml_dtypes.float8_e4m3fn),
              "raw.big": rng.standard_normal((64, 32)).astype(np.float32)}
    return [numpy_helper.from_array(a, name) for name, a in arrays.items()]


def model(extra: list[onnx.TensorProto] = ()) -> onnx.ModelProto:
    """y = x @ fc.weight.T + fc.bias, beside initializers of every storage."""
    node = helper.make_node("Gemm", ["x", "fc.weight", "fc.bias"], ["y"], transB=1, alpha=1.0, name="fc")
    inits = [numpy_helper.from_array(WEIGHT, "fc.weight"), numpy_helper.from_array(BIAS, "fc.bias"),
             *_typed(), *_raw(), *extra]
    graph = helper.make_graph([node], "main", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], inits)
    made = helper.make_model(graph, producer_name="ckptfs-tests", opset_imports=[helper.make_opsetid("", 17)])
    made.ir_version = 8  # onnxruntime's range
    helper.set_model_props(made, METADATA)
    return made


def if_model() -> onnx.ModelProto:
    """z = c of the branch `cond` chooses, each branch's c an initializer of its subgraph."""
    def branch(name: str, value: float) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("Identity", ["c"], ["z"])], name, [],
                                 [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])],
                                 [numpy_helper.from_array(np.array([value, -value], np.float32), "c")])

    node = helper.make_node("If", ["cond"], ["z"], then_branch=branch("yes", 2.0), else_branch=branch("no", 3.0),
                            name="choose")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])])
    made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    made.ir_version = 8
    return made


def add_model(initializers: list[onnx.TensorProto]) -> onnx.ModelProto:
    """y = x + w, float32 [2], beside `initializers` (which hold w, or several)."""
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "add",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], initializers)
    made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    made.ir_version = 8
    return made


def save(folder: Path, layout: str, proto: onnx.ModelProto | None = None) -> Path:
    """The model saved in `folder` as `layout`: "inline", "external" (one
    data file for tensors of 64 bytes and more) or "per-tensor" (a file each)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    proto = proto if proto is not None else model()
    if layout == "inline":
        onnx.save_model(proto, path)
    else:
        onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=layout == "external",
                        location="model.data", size_threshold=64 if layout == "external" else 0)
    return path


def reference(path: Path) -> dict[str, np.ndarray]:
    """Every initializer as onnx.load and numpy_helper.to_array read it."""
    loaded = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in loaded.graph.initializer}


def torch_export(out: Path) -> None:
    """A torch MLP exported to ONNX (torch.onnx.export, TorchScript exporter)
    beside its state_dict saved with torch.save under a `model.` prefix."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    out.mkdir(parents=True, exist_ok=True)
    torch.save({f"model.{k}": v for k, v in net.state_dict().items()}, out / "model.pt")
    torch.onnx.export(net, (torch.randn(1, 4),), str(out / "model.onnx"), dynamo=False, input_names=["x"],
                      output_names=["y"])


if __name__ == "__main__":
    if sys.argv[1] == "torch":
        torch_export(Path(sys.argv[2]))
