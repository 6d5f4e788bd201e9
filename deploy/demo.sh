#!/bin/sh
# The FL demo against the compose network (deploy/compose.yaml, service `demo`): every peer's home is
# mounted read-only at /peers/<model>, so `--home` gives this script each owner's address and token.
# Usage: fiun-demo [LABELS]   (default 2)
set -eu
LABELS="${1:-2}"
MODELS=/tmp/models
PEERS="${FIUN_DEMO_PEERS:-/peers}"
fiun-sim export --framework fl --quiet --out "$MODELS"
publish() {  # publish MODEL [PARENT:RELATION ...] through the model owner's peer
    m="$1"; shift
    if [ $# -gt 0 ]; then set -- --parents "$@"; fi
    fiun-peer admin --home "$PEERS/$m" publish --model-id "$m" --weights "$MODELS/$m/weights.safetensors" \
        --data "$MODELS/$m/data.safetensors" --arch "$MODELS/arch.json" --labels 0,1,2,3,4,5,6,7,8,9 "$@"
}
wait_for() {  # wait_for PEER MODEL: a child's parents must have reached its peer before it publishes
    until fiun-peer admin --home "$PEERS/$1" lineage | grep "^$2 " >/dev/null; do sleep 1; done
}
for c in c1 c2 c3 c4 c5; do publish "$c"; done
for c in c1 c2 c3 c4 c5; do wait_for g "$c"; done
publish g c1:aggregate c2:aggregate c3:aggregate c4:aggregate c5:aggregate
wait_for a g
publish a g:finetune
wait_for b a
publish b a:finetune
fiun-peer admin --home "$PEERS/b" lineage
fiun-peer admin --home "$PEERS/c1" unlearn --labels "$LABELS" --id "forget-$LABELS"
fiun-peer admin --home "$PEERS/b" request "forget-$LABELS" --wait --wait-timeout 600
