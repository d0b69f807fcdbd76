#!/usr/bin/env bash
# Mount the bundled samples, look inside with ordinary tools, edit a config
# in place and compare the result with the original, unmount.
set -euo pipefail
ckptfs=$1 python=$2
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/ckptfs-demo.XXXXXX)
mnt=$work/mnt edited=$work/edited
mkdir "$mnt" "$edited"
cleanup() {
    for m in "$mnt" "$edited"; do
        "$ckptfs" umount "$m" >/dev/null 2>&1 || fusermount3 -u -z "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

# a word as one would type it: quoted where the shell would split or expand it,
# in double quotes when it holds single quotes and nothing double quotes expand
quote() {
    if [[ $1 =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then printf '%s' "$1"
    elif [[ $1 == *\'* && $1 != *[\"\$\`\\!]* ]]; then printf '"%s"' "$1"
    else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
# print a command as it could be pasted into a shell, then run it
show() {
    printf '\n$'
    for word in "$@"; do printf ' '; quote "$word"; done
    printf '\n'
    "$@"
}

show "$ckptfs" mount "$here/hf/bert_tiny_sharded" "$mnt"
show ls "$mnt"
show ls "$mnt/encoder/layer/0/attention/self/query"
show head -n 12 "$mnt/.ckptfs/info.yaml"
show getfattr -d "$mnt/embeddings/word_embeddings/weight.npy"
show "$python" -c "import numpy as np; w = np.load('$mnt/embeddings/word_embeddings/weight.npy', mmap_mode='r'); print(w.dtype, w.shape, w[1, :4])"
show du -sh --apparent-size "$mnt/encoder"
show "$ckptfs" umount "$mnt"

cp "$here/nemo/tiny.nemo" "$work/copy.nemo"
show "$ckptfs" mount "$work/copy.nemo" "$mnt"
show ls -l "$mnt"
show cat "$mnt/model_config.yaml"
show sed -i 's/lr: 0.001/lr: 0.0003/' "$mnt/model_config.yaml"
show "$python" -c "import numpy as np; np.save('$mnt/model_weights.ckpt/encoder/0/bias.npy', np.zeros(24, np.float32))"
show "$ckptfs" umount "$mnt"   # writes copy.nemo anew, in the same format
show tar tvf "$work/copy.nemo"

show "$ckptfs" mount -o ro "$here/nemo/tiny.nemo" "$mnt"
show "$ckptfs" mount -o ro "$work/copy.nemo" "$edited"
printf '\n# what the edit changed:'
show diff -r -x raw -x export "$mnt" "$edited" || true
show "$ckptfs" umount "$mnt"
show "$ckptfs" umount "$edited"

# without FUSE: is it safe to torch.load, and one consolidated file from FSDP2's shards
show "$ckptfs" scan "$here/lightning/tiny.ckpt"
show "$ckptfs" export "$here/dcp/fsdp2_2rank" "$work/consolidated.safetensors"

# what each tensor holds; the edit and the Lightning checkpoint as pages to open in a browser (kept after the demo)
show "$ckptfs" stats "$work/copy.nemo"
reports=${TMPDIR:-/tmp}
show "$ckptfs" diff "$here/nemo/tiny.nemo" "$work/copy.nemo" --html "$reports/ckptfs-demo-diff.html" || true
show "$ckptfs" info "$here/lightning/tiny.ckpt" --html "$reports/ckptfs-demo-info.html"
printf '\n# open %s in a browser: the change by layer and module, the tensors ranked, the config diff\n' \
    "$reports/ckptfs-demo-diff.html"
printf "# and %s: parameters by module and dtype, the tree, each tensor's statistics, the pickle's globals\n" \
    "$reports/ckptfs-demo-info.html"
