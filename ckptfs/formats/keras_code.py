"""The code a Keras model config makes Keras run or import when the model
is loaded, found without loading it: what `ckptfs scan` lists for a
`.keras` file's `config.json` and a legacy `.h5` file's `model_config`
attribute (docs/security.md, "Keras models"), as modelscan does.

- a Lambda layer's function as marshalled Python bytecode (`__lambda__`
  in Keras 3, `function_type: lambda` in tf.keras 2 files): Keras 3 runs
  it only with `safe_mode=False`, tf.keras 2 always;
- a function or class named by a module outside Keras (`module` +
  `class_name`, `function_type: function`): Keras imports that module;
- a `TFOpLambda` layer: it calls the TensorFlow function it names.

Built-in Keras objects (`module` keras or keras.*, or Keras's `builtins`
functions) are code Keras ships, and are not listed, except `DENIED`:
those published safe_mode bypasses called from a config.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..limits import LIMITS

#: dicts inside dicts the walk enters (Keras nests a few per layer)
MAX_NESTING = 200
#: Keras's own functions and layers a config can name that fetch or load
#: other files or turn safe_mode off, by name in any keras.* module: the
#: safe_mode bypasses after CVE-2025-1550 (which named modules outside
#: Keras) used them: CVE-2025-8747 (`keras.utils.get_file` downloads),
#: CVE-2025-9906 (`keras.config.enable_unsafe_deserialization`, and
#: `set_global_attribute` of its module, before a Lambda; the same report
#: loads another model with `keras.models.load_model(safe_mode=False)`);
#: `TFSMLayer` loads a TensorFlow SavedModel, whose graph may read and write files
DENIED = {"get_file": "downloads a file (CVE-2025-8747)",
          "enable_unsafe_deserialization": "turns safe_mode off (CVE-2025-9906)",
          "set_global_attribute": "can turn safe_mode off (CVE-2025-9906)",
          "load_model": "loads another model, safe_mode its own argument (CVE-2025-9906)",
          "load_weights": "loads weights from another file",
          "TFSMLayer": "loads a TensorFlow SavedModel from a path"}
BYTECODE = ("Python bytecode (marshalled, base64) that Keras runs when the model is loaded "
            "(Keras 3 only with safe_mode=False; tf.keras 2 always)")


@dataclass(frozen=True)
class Code:
    """One piece of code the config makes Keras run: `module`.`name` (as
    the scan's globals are named), where in the config, whether it is
    bytecode (never allowed), and why it runs."""

    module: str
    name: str
    where: str
    bytecode: bool
    reason: str


def code_in(config: object) -> tuple[list[Code], list[str]]:
    """Every piece of code `config` (a parsed Keras config) names, and
    problems (a config too deep or too large to be walked whole)."""
    found: list[Code] = []
    problems: list[str] = []
    pending: list[tuple[object, str, int, str]] = [(config, "config", 0, "")]
    seen = 0
    while pending:
        value, where, depth, layer = pending.pop()
        seen += 1
        if seen > LIMITS.yaml_values:
            problems.append(f"more than {LIMITS.yaml_values} values: the rest of the config is not scanned")
            break
        if depth > MAX_NESTING:
            problems.append(f"{where}: nested more than {MAX_NESTING} deep: not scanned")
            continue
        if isinstance(value, dict):
            layer = _layer_name(value) or layer
            found += _in_object(value, f"layer {layer!r}: {where}" if layer else where)
            pending += [(v, f"{where}.{k}", depth + 1, layer) for k, v in reversed(value.items())]
        elif isinstance(value, list):
            pending += [(v, f"{where}[{i}]", depth + 1, layer) for i, v in reversed(list(enumerate(value)))]
    return found, problems


def _layer_name(obj: dict) -> str:
    """The name of the layer `obj` serializes (its config has `trainable`), or ""."""
    inner = obj.get("config")
    if "class_name" in obj and isinstance(inner, dict) and "trainable" in inner and isinstance(inner.get("name"), str):
        return inner["name"]
    return ""


def _in_object(obj: dict, where: str) -> list[Code]:
    """What one serialized object of the config runs."""
    kind, module = obj.get("class_name"), obj.get("module")
    inner = obj.get("config")
    if kind == "__lambda__":
        return [Code("keras.layers", "Lambda", where, True, BYTECODE)]
    if kind == "TFOpLambda" and isinstance(inner, dict):
        function = str(inner.get("function", "?"))
        return [Code("tensorflow", function, where, False, f"a TFOpLambda layer: calls tf.{function} by name")]
    found = []
    if isinstance(inner, dict) and inner.get("function_type") in ("lambda", "function"):  # a tf.keras 2 Lambda
        found += _legacy_lambda(inner, where)
    if isinstance(kind, str) and isinstance(module, str):
        name = inner if kind == "function" and isinstance(inner, str) else kind
        if not _ships_with_keras(module):
            found.append(Code(module, name, where, False, f"Keras imports {module!r} to find {name!r} (a custom object)"))
        elif name in DENIED:
            found.append(Code(module, name, where, False, f"a Keras function that {DENIED[name]}"))
    return found


def _legacy_lambda(inner: dict, where: str) -> list[Code]:
    """A tf.keras 2 Lambda layer's function (and its output_shape function)."""
    found = []
    for key in ("function", "output_shape"):
        kind = inner.get(f"{key}_type" if key == "output_shape" else "function_type")
        if kind == "lambda":
            found.append(Code("keras.layers", "Lambda", f"{where}.{key}", True, BYTECODE))
        elif kind == "function":
            module = str(inner.get("module") if key == "function" else inner.get("output_shape_module"))
            found.append(Code(module, str(inner.get(key)), f"{where}.{key}", False,
                              f"a Lambda layer: Keras imports {module!r} and calls {inner.get(key)!r}"))
    return found


def _ships_with_keras(module: str) -> bool:
    return module in ("keras", "builtins", "tf_keras") or module.startswith(("keras.", "tf_keras."))
