#!/bin/sh
# The scale benchmark's walks and reads of an earlier commit and of this
# tree, alternated, each part ROUNDS times (a restructuring must not make
# them worse; the machine's speed drifts, so the two sides take turns):
#
#     make before-after REV=REV [ROUNDS=N]     # tables in bench/out/before_after/
#
# REV is checked out in a temporary git worktree; both sides run with this
# tree's virtualenv (.venv) and `bench/scale.py --quick`.
set -eu
rev=${1:?usage: bench/before_after.sh REV [ROUNDS]}
rounds=${2:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
python=$here/.venv/bin/python
out=$here/bench/out/before_after
before=$(mktemp -d /var/tmp/ckptfs-before.XXXXXX)
trap 'git -C "$here" worktree remove --force "$before"' EXIT
git -C "$here" worktree add --detach --quiet "$before" "$rev"
mkdir -p "$out"
for round in $(seq "$rounds"); do
    for side in before after; do
        tree=$here
        [ "$side" = before ] && tree=$before
        for part in walks random reread; do
            (cd "$tree" && PYTHONPATH=$tree "$python" bench/scale.py --quick --only "$part" \
                --workdir "/var/tmp/ckptfs-bench-$side" > "$out/$side-$part-$round.md")
        done
    done
done
grep -H 'ckptfs `\|ckptfs (\|pread\|mmap\|read a second' "$out"/*.md
