#!/usr/bin/env bash
# The main job (`make demo`): an encoder, the codes of the CIFAR-10 test images, a FAISS index of
# them with their pictures, and the HTTP service with its web page on http://127.0.0.1:8000.
#
# The encoder is the shipped models/cifar10 (training/configs/cifar10-cpu-w32.yaml, all three terms; its
# local map whitened: 200-NN 0.714 against raw pixels 0.413; it explains its matches); without it a short training run makes one (a pipeline check,
# not a good encoder). Data comes from $INFOMAX_DATA_DIR and is
# downloaded there by torchvision where it is missing and the machine is online.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
BIN="$VENV/bin"
OUT="${DEMO_DIR:-artifacts/demo}"
HOST="${INFOMAX_HOST:-127.0.0.1}"
PORT="${INFOMAX_PORT:-8000}"
mkdir -p "$OUT"

"$BIN/python" -c 'from infomax.data import load_dataset; load_dataset("cifar10", split="test", download=True)'

if [[ -f models/cifar10/encoder.json ]]; then
  MODEL=models/cifar10
  echo "== encoder: the shipped $MODEL"
elif [[ -f "$OUT/encoder/encoder.json" ]]; then
  MODEL="$OUT/encoder"
  echo "== encoder: $MODEL (trained by an earlier demo; delete it to train again)"
else
  MODEL="$OUT/encoder"
  echo "== encoder: no shipped model; a short training run (5,000 CIFAR-10 images, 1 epoch)"
  "$BIN/infomax" train --config training/configs/cifar10.yaml --data.download true \
      --data.limit_train 5000 --trainer.max_epochs 1 --export.dirpath "$MODEL"
fi

echo "== codes of the 10,000 CIFAR-10 test images"
"$BIN/infomax" embed --model "$MODEL" --data cifar10 --split test --out "$OUT/embeddings" --overwrite
echo "== FAISS index with the pictures"
"$BIN/infomax" index build --embeddings "$OUT/embeddings" --out "$OUT/index" --images --overwrite
echo "== serving on http://$HOST:$PORT (web page at /, API docs at /docs); Ctrl-C stops it"
exec "$BIN/infomax" serve --model "$MODEL" --index "$OUT/index" --host "$HOST" --port "$PORT"
