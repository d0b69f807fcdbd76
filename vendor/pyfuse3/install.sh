#!/usr/bin/env bash
# Installs pyfuse3 3.5.0 with ckptfs's patches (zero-message-open.patch,
# read-interrupts.patch, fast-loop.patch; see README.md here) into the
# virtualenv whose python is $1. Idempotent: a pyfuse3 of this build
# ($version+$build) is left alone; any other, older builds of ours
# included, is rebuilt. Bump `build` when a patch changes.
# Needs what pyfuse3 needs to build (libfuse3-dev, pkg-config, gcc) and
# `patch`.
set -euo pipefail
python=$1
here=$(cd "$(dirname "$0")" && pwd)
version=3.5.0
sha256=88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24
build=ckptfs4
if "$python" -c "import pyfuse3, sys; sys.exit(pyfuse3.__version__ != '$version+$build')" 2>/dev/null; then
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "== building pyfuse3 $version with ckptfs's patches (vendor/pyfuse3)"
"$python" -m pip download --quiet --no-deps --no-binary pyfuse3 --dest "$work" "pyfuse3==$version"
echo "$sha256  $work/pyfuse3-$version.tar.gz" | sha256sum --check --quiet
tar -xzf "$work/pyfuse3-$version.tar.gz" -C "$work"
for name in zero-message-open read-interrupts fast-loop; do
    patch --quiet -d "$work/pyfuse3-$version" -p1 < "$here/$name.patch"
done
SETUPTOOLS_SCM_PRETEND_VERSION="$version+$build" "$python" -m pip install --quiet "$work/pyfuse3-$version"
