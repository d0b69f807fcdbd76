"""Writes TensorFlow checkpoints for tests/test_tensorflow.py, with
TensorFlow itself, in a process of its own (importing tensorflow in the
pytest process warns and clashes with torch):

    python tests/tf_writer.py OUT [PREFIX...]

makes `OUT/ckpt/` (a `tf.train.Checkpoint` save: `checkpoint`, `ckpt-1.index`,
`ckpt-1.data-00000-of-00001`), `OUT/second/` (the same variables, one of them
changed, for `ckptfs diff`), `OUT/sharded/` (the same model saved in several
data shards by a `MaxShardSizePolicy`, which splits some variables across
them), `OUT/saved_model/` (`tf.saved_model.save`, `assets/vocab.txt` among
its files), `OUT/saver/` (`tf.compat.v1.train.Saver`, a partitioned
variable), and for each bundle `OUT/refs/NAME.json`: every key with its
dtype, shape and the bytes `tf.train.load_checkpoint(...).get_tensor` gives,
in `OUT/refs/NAME/N.bin` (NAME: the folder of the bundle). Each
PREFIX given (a bundle written by tests/tf_bundle_writer.py) is read the
same way, and nothing written.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


class Layer(tf.Module):
    def __init__(self, shape, dtype, name=None):
        super().__init__(name=name)
        rng = np.random.default_rng(sum(shape) + len(dtype))
        values = rng.standard_normal(shape).astype(np.float32)
        self.kernel = tf.Variable(tf.cast(values, dtype))
        self.bias = tf.Variable(tf.zeros(shape[-1:], dtype) + tf.cast(1.5, dtype))


class Model(tf.Module):
    def __init__(self, vocabulary: str):
        super().__init__()
        self.vocabulary = tf.saved_model.Asset(vocabulary)  # the SavedModel's assets/
        self.dense = Layer((3, 4), "float32")
        self.half = Layer((5, 2), "float16")
        self.brain = Layer((2, 3), "bfloat16")
        self.steps = tf.Variable(np.array([1, -2, 3, 1 << 40], np.int64))
        self.mask = tf.Variable(np.array([True, False, True]))
        self.small = tf.Variable(np.array([-3, 4, 127], np.int8))
        self.wide = tf.Variable(np.float64(2.5))
        self.waves = tf.Variable(np.array([1 + 2j, -0.5j], np.complex64))
        self.label = tf.Variable("a string variable")

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def __call__(self, x):
        return tf.matmul(x, self.dense.kernel) + self.dense.bias


def references(prefix: str, out: str) -> None:
    """Every key of the bundle at `prefix`, as TensorFlow reads it."""
    reader = tf.train.load_checkpoint(prefix)
    folder = os.path.join(out, "refs", os.path.basename(os.path.dirname(prefix)))
    os.makedirs(folder, exist_ok=True)
    listed = {}
    for n, (key, dtype) in enumerate(sorted(reader.get_variable_to_dtype_map().items())):
        value = reader.get_tensor(key)
        entry = {"dtype": dtype.name, "shape": list(np.shape(value))}
        if dtype != tf.string:
            np.ascontiguousarray(value).tofile(os.path.join(folder, f"{n}.bin"))
            entry["file"] = f"{n}.bin"
        listed[key] = entry
    with open(folder + ".json", "w") as f:
        json.dump(listed, f, indent=1)


def saver_v1(out: str) -> None:
    """A `tf.compat.v1.train.Saver` (V2 bundle) of a graph whose variable
    `part/w` is partitioned in three (a slice entry each)."""
    folder = os.path.join(out, "saver")
    os.makedirs(folder)
    with tf.Graph().as_default():
        tf.compat.v1.get_variable("part/w", shape=[10, 3], initializer=tf.compat.v1.random_normal_initializer(seed=1),
                                  partitioner=tf.compat.v1.fixed_size_partitioner(3))
        tf.compat.v1.get_variable("b", initializer=tf.constant([1, 2, 3], tf.int32))
        saver = tf.compat.v1.train.Saver(sharded=True)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            references(saver.save(session, os.path.join(folder, "model.ckpt")), out)


def main(out: str) -> None:
    vocabulary = os.path.join(out, "vocab.txt")
    with open(vocabulary, "w") as f:
        f.write("a\nb\n")
    model = Model(vocabulary)
    ckpt = tf.train.Checkpoint(model=model)
    references(ckpt.save(os.path.join(out, "ckpt", "ckpt")), out)
    model.dense.bias.assign([9.0, 9.0, 9.0, 9.0])
    references(tf.train.Checkpoint(model=model).save(os.path.join(out, "second", "ckpt")), out)
    policy = tf.train.experimental.MaxShardSizePolicy(max_shard_size=64)
    options = tf.train.CheckpointOptions(experimental_sharding_callback=policy)
    references(tf.train.Checkpoint(model=model).save(os.path.join(out, "sharded", "ckpt"), options=options), out)
    tf.saved_model.save(model, os.path.join(out, "saved_model"))
    references(os.path.join(out, "saved_model", "variables", "variables"), out)
    saver_v1(out)


if __name__ == "__main__":
    if len(sys.argv) > 2:
        for prefix in sys.argv[2:]:
            references(prefix, sys.argv[1])
    else:
        main(sys.argv[1])
