"""Writes the Keras models of tests/test_keras.py with Keras itself (numpy
backend: the quickest to import), and what Keras loads back from them, the
references the tests compare the mount with.

    python -m tests.keras_writer OUT

OUT/plain.keras, plain.h5 (legacy `save`), plain.weights.h5 (`save_weights`):
a Sequential model of two Dense layers, the second float16, and a
BatchNormalization (non-trainable variables); other.keras: the same model
built with other initial values (for `diff`); lambda.keras, lambda.h5: a
functional model with a Lambda layer; bf16.keras: a bfloat16 Dense layer
(Keras stores it as 2-byte opaque values marked `dtype: bfloat16`). OUT/references/<file>/<layer>/<n>.npy:
each layer's weights as `keras.saving.load_model` (`model.load_weights` for
the .weights.h5) gives them.

    python -m tests.keras_writer OUT --check MODEL.keras LAYER

loads an edited model and prints the named layer's config and weights as JSON.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "numpy")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402


def plain(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="d1"),
                              keras.layers.BatchNormalization(name="norm"),
                              keras.layers.Dense(3, name="d2", dtype="float16")], name="plain")
    model.layers[1].moving_mean.assign(np.arange(4, dtype=np.float32) / 7)  # not all zeros
    return model


def with_lambda() -> keras.Model:
    keras.utils.set_random_seed(2)
    inputs = keras.Input((4,))
    x = keras.layers.Dense(3, name="dense")(inputs)
    x = keras.layers.Lambda(lambda v: v * 2, name="double")(x)
    return keras.Model(inputs, x)


def references(model: keras.Model, folder: Path) -> None:
    for layer in model.layers:
        for n, weight in enumerate(layer.get_weights()):
            (folder / layer.name).mkdir(parents=True, exist_ok=True)
            np.save(folder / layer.name / f"{n}.npy", weight)


def write(out: Path) -> None:
    out.mkdir(parents=True)
    model = plain(0)
    model.save(out / "plain.keras")
    model.save(out / "plain.h5")
    model.save_weights(out / "plain.weights.h5")
    plain(1).save(out / "other.keras")
    with_lambda().save(out / "lambda.keras")
    with_lambda().save(out / "lambda.h5")
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="b", dtype="bfloat16")]).save(out / "bf16.keras")
    refs = out / "references"
    for name in ("plain.keras", "plain.h5", "other.keras", "bf16.keras"):
        references(keras.saving.load_model(out / name), refs / name)
    empty = plain(5)
    empty.load_weights(out / "plain.weights.h5")
    references(empty, refs / "plain.weights.h5")


def check(path: str, layer: str) -> None:
    model = keras.saving.load_model(path)
    found = model.get_layer(layer)
    print(json.dumps({"config": found.get_config(), "name": model.name, "layers": [lay.name for lay in model.layers],
                      "weights": [w.tolist() for w in found.get_weights()]}))


if __name__ == "__main__":
    if "--check" in sys.argv:
        check(sys.argv[3], sys.argv[4])
    else:
        write(Path(sys.argv[1]))
