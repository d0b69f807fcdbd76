#!/usr/bin/env bash
# Mount the bundled samples, look inside with ordinary tools, unmount.
set -euo pipefail
ckptfs=$1 python=$2
here=$(cd "$(dirname "$0")" && pwd)
mnt=$(mktemp -d /tmp/ckptfs-demo.XXXXXX)
cleanup() { "$ckptfs" umount "$mnt" >/dev/null 2>&1 || fusermount3 -u -z "$mnt" 2>/dev/null || true; rmdir "$mnt"; }
trap cleanup EXIT

show() { printf '\n$ %s\n' "$*"; "$@"; }

show "$ckptfs" mount "$here/hf/bert_tiny_sharded" "$mnt"
show ls "$mnt"
show ls "$mnt/encoder/layer/0/attention/self/query"
show head -n 12 "$mnt/.ckptfs/info.yaml"
show getfattr -d "$mnt/embeddings/word_embeddings/weight.npy"
show "$python" -c "import numpy as np; w = np.load('$mnt/embeddings/word_embeddings/weight.npy', mmap_mode='r'); print(w.dtype, w.shape, w[1, :4])"
show du -sh --apparent-size "$mnt/encoder"
show "$ckptfs" umount "$mnt"

show "$ckptfs" mount "$here/nemo/tiny.nemo" "$mnt"
show ls -l "$mnt"
show cat "$mnt/model_config.yaml"
show "$ckptfs" umount "$mnt"
