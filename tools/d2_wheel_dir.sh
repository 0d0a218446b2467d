#!/usr/bin/env bash
# Print where a detectron2 wheel compiled from the archive $1 for the interpreter $2 is kept:
# .whl/detectron2-<first 16 hex digits of the archive's sha256>-py<X.Y>-torch<version>. Prints
# nothing for a source directory (no stable name). tools/setup_env.sh writes it,
# tools/check_wheel.sh reads it.
set -euo pipefail
[ -f "$1" ] || exit 0
hash=$(sha256sum "$1" | cut -c1-16)
tag=$("$2" -c 'import sys, torch; print("py%d.%d-torch%s" % (sys.version_info[0], sys.version_info[1], torch.__version__))')
echo ".whl/detectron2-$hash-$tag"
