"""Orbax checkpoints for tests/test_orbax.py, written by orbax-checkpoint on
CPU JAX, and what Orbax restores from each, as the reference.

`python -m tests.orbax_writer OUT` writes, under OUT:
- `ocdbt/`: PyTreeCheckpointer, OCDBT (Orbax's default), zarr arrays inside;
- `zarr/`: the same tree with `use_ocdbt=False`: a zarr folder per array;
- `zarr3/`: `use_ocdbt=False, use_zarr3=True`: a zarr3 folder per array;
- `changed/`: `ocdbt/` with one value of one array changed (for `ckptfs diff`);
- `manager/`: a CheckpointManager's save of step 3 (StandardCheckpointer's
  handler): `manager/3/default/` beside `manager/3/_CHECKPOINT_METADATA`;
and for each, `NAME.ref/PARAM.npy`: every array as Orbax restores it, by
its parameter name (the pytree keys joined by dots), and `NAME.ref/dtypes.json`.

Run as a program: JAX and Orbax stay out of the pytest process.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

#: bytes per chunk of the larger array: several chunks, as a sharded save has
CHUNK_BYTES = 64 << 10
#: the size of the one array of `wide`
WIDE_MIB = 256


def tree(changed: bool = False) -> dict:
    """float32, bfloat16, float16 and int32 arrays in nested dicts and a list,
    a 0-d array, one array of several chunks, a Python int and a string."""
    rng = np.random.default_rng(0)
    big = rng.standard_normal((700, 300)).astype(np.float32)
    if changed:
        big[123, 45] += 1.0
    return {
        "params": {
            "dense": {"kernel": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32),
                      "bias": jnp.asarray(rng.standard_normal(4), jnp.bfloat16)},
            "emb": jnp.asarray(rng.standard_normal((5, 3)), jnp.float16),
        },
        "layers": [jnp.arange(2, dtype=jnp.int32), {"w": jnp.asarray(big)}],
        "step": jnp.array(7, jnp.int32),
        "count": 5,
        "name": "tiny",
    }


def save_args(item: dict) -> dict:
    args = jax.tree_util.tree_map(lambda _: ocp.SaveArgs(), item)
    args["layers"][1]["w"] = ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES)
    return args


def pytree_save(path: Path, item: dict, **handler) -> None:
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(**handler))
    checkpointer.save(path, args=ocp.args.PyTreeSave(item, save_args=save_args(item)))
    reference(checkpointer.restore(path), path.with_name(path.name + ".ref"))


def manager_save(path: Path, item: dict) -> None:
    arrays = {k: v for k, v in item.items() if k not in ("count", "name")}
    with ocp.CheckpointManager(path) as manager:
        manager.save(3, args=ocp.args.StandardSave(arrays, save_args=save_args(arrays)))
        manager.wait_until_finished()
    restored = ocp.StandardCheckpointer().restore(path / "3" / "default")
    reference(restored, path.with_name(path.name + ".ref"))


def reference(restored: dict, out: Path) -> None:
    """Every array leaf of what Orbax restored, as `PARAM.npy`, and each
    one's dtype by name in `dtypes.json` (np.save writes bfloat16 as `V2`)."""
    out.mkdir(parents=True)
    dtypes = {}
    for keys, value in jax.tree_util.tree_flatten_with_path(restored)[0]:
        if isinstance(value, (jax.Array, np.ndarray, int, float)):
            param = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys)
            value = np.asarray(value)
            np.save(out / f"{param}.npy", value)
            dtypes[param] = value.dtype.name
    (out / "dtypes.json").write_text(json.dumps(dtypes))


def wide(out: Path) -> None:
    """`python -m tests.orbax_writer OUT wide`: OUT/wide/, one float32 array
    of WIDE_MIB MiB in chunks of 4 MiB (a repeating pattern: small on disk)."""
    values = np.tile(np.arange(1 << 20, dtype=np.float32), WIDE_MIB // 4).reshape(-1, 1024)
    item = {"wide": values}
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
    checkpointer.save(out / "wide", args=ocp.args.PyTreeSave(item, save_args={"wide": ocp.SaveArgs(
        chunk_byte_size=4 << 20)}))


def main(out: Path) -> None:
    out.mkdir(parents=True)
    pytree_save(out / "ocdbt", tree())
    pytree_save(out / "zarr", tree(), use_ocdbt=False)
    pytree_save(out / "zarr3", tree(), use_ocdbt=False, use_zarr3=True)
    pytree_save(out / "changed", tree(changed=True))
    manager_save(out / "manager", tree())


if __name__ == "__main__":
    (wide if sys.argv[2:] == ["wide"] else main)(Path(sys.argv[1]))
