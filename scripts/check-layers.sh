#!/bin/sh
# check-layers.sh - fails when a source file includes a header from a layer above its own.
#
# The layers (an arrow A <- B: B may include A's headers, never the reverse):
#   common <- kernels <- model <- drafter, verifier <- engine <- bridge <- workers
#   common <- protocol <- drafter, verifier, engine, bridge   (protocol beside kernels/model)
# drafter and verifier are siblings: neither includes the other. tests/, bench/, fuzz/ and tools/
# may include anything. Run by `make check-layers`, which `make test` and `make check` depend on.
#
# The protocol's wire form (protobuf-c) is protocol/'s own: everywhere else the messages are
# protocol/msg.h's plain types. Outside protocol/, including protocol/tandem.pb-c.h, wire.h or
# transport_wire.h, or naming a protobuf-c type or function (Tandem__*, tandem__*, TANDEM__*,
# ProtobufC*, protobuf_c_*), fails (bench/ included); tests/ and fuzz/ test the wire format and
# may.
# The tree checked: $1 when given (tests/test_layers.c plants a bad include in a copy), else ours.
cd "${1:-$(dirname "$0")/..}" || exit 2
allowed() { # allowed LAYER -> the directories LAYER may include from
    case $1 in
    common) echo "common" ;;
    kernels) echo "common kernels" ;;
    model) echo "common kernels model" ;;
    protocol) echo "common protocol" ;;
    drafter) echo "common kernels model protocol drafter" ;;
    verifier) echo "common kernels model protocol verifier" ;;
    engine) echo "common kernels model protocol drafter verifier engine" ;;
    bridge) echo "common kernels model protocol drafter verifier engine bridge" ;;
    workers) echo "common kernels model protocol drafter verifier engine bridge workers" ;;
    esac
}
bad=0
for layer in common kernels model protocol drafter verifier engine bridge workers; do
    ok=$(allowed "$layer")
    files=$(find "$layer" -type f \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \
        -o -name '*.cpp' \) 2>/dev/null)
    [ -n "$files" ] || continue
    # every '#include "dir/..."' line: file:line:dir
    hits=$(grep -HnE '^[[:space:]]*#[[:space:]]*include[[:space:]]*"[A-Za-z0-9_]+/' $files |
        sed -E 's/^([^:]+):([0-9]+):[[:space:]]*#[[:space:]]*include[[:space:]]*"([A-Za-z0-9_]+)\/.*/\1:\2:\3/')
    for h in $hits; do
        dir=${h##*:}
        case " $ok " in
        *" $dir "*) ;;
        *)
            loc=${h%:*}
            echo "layering: $loc: $layer/ includes $dir/ (allowed: $ok)" >&2
            bad=1
            ;;
        esac
    done
done
[ $bad -eq 0 ] || { echo "check-layers: an include points up the layers (scripts/check-layers.sh)" >&2; exit 1; }

files=$(find common kernels model drafter verifier engine bridge workers bench -type f \( -name '*.c' \
    -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name '*.cpp' \) 2>/dev/null)
if [ -n "$files" ]; then
    hits=$(grep -HnE '#[[:space:]]*include[[:space:]]*"protocol/(tandem\.pb-c|wire|transport_wire)\.h"|(^|[^A-Za-z0-9_])(Tandem__|tandem__|TANDEM__|ProtobufC|protobuf_c_)' \
        $files | cut -d: -f1,2)
    for h in $hits; do
        echo "layering: $h: protobuf wire types outside protocol/ (use protocol/msg.h's td_msg_t)" >&2
        bad=1
    done
fi
[ $bad -eq 0 ] || { echo "check-layers: the protocol's wire types leak out of protocol/ (scripts/check-layers.sh)" >&2; exit 1; }
echo "check-layers: ok"
