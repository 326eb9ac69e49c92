#!/usr/bin/env bash
# End-to-end check of the service's container: build the image (Dockerfile), start it with a tiny
# artifact + index mounted read-write at /data, and check the HTTP API against it.
#
#   bash scripts/docker-e2e.sh          # from anywhere; root (it starts a private dockerd)
#
# 1. prepares on the host, with the project's .venv (`make install` if missing): a random-init
#    artifact and an index of 48 CIFAR-10 test images ($INFOMAX_DATA_DIR, default ../shared/data),
#    by tests/e2e/prepare.py (`infomax embed` + `infomax index build` + their pictures);
# 2. ../shared/tools/docker-smoke.sh builds the image, runs it (non-root, uid 10001) with the data
#    mounted, waits for /healthz and runs tests/e2e/http_check.py against it (BASE_URL);
# 3. after the container was removed (docker rm -f: SIGKILL), checks on the host that the item
#    added over HTTP is in the index folder of the volume.
# Exits non-zero on any failure. Environment: SHARED (default ../shared), INFOMAX_DATA_DIR, E2E_N,
# APP_PORT / IDX_PORT (default 8000 / 8765, another free port if taken), KEEP=1 keeps the work
# folder, and docker-smoke.sh's own (DOCKER_CI_DIR...).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
t0=$SECONDS
log() { printf '[docker-e2e %(%T)T] %s\n' -1 "$*"; }

[ "$(id -u)" = 0 ] || { echo "docker-e2e: run as root (docker-smoke.sh installs Docker and starts a dockerd)" >&2; exit 1; }
SHARED=${SHARED:-$(cd .. && pwd)/shared}
SMOKE=$SHARED/tools/docker-smoke.sh
[ -f "$SMOKE" ] || { echo "docker-e2e: $SMOKE not found (set SHARED to the shared folder)" >&2; exit 1; }
export INFOMAX_DATA_DIR=${INFOMAX_DATA_DIR:-$SHARED/data}
N=${E2E_N:-48}
UID_IN_IMAGE=10001  # the Dockerfile's user

PY=$ROOT/.venv/bin/python
if ! "$PY" -c "import infomax, httpx, pytest" 2>/dev/null; then
  log "make install (the host side needs the project and its test extras)"
  make install
fi

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/infomax-e2e.XXXXXX")
cleanup() { if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT

log "prepare artifact + index ($N images) in $WORK"
"$PY" tests/e2e/prepare.py "$WORK" --n "$N"
# The container's user must be able to write the index folder (SQLite writes beside its files).
if ! chown -R "$UID_IN_IMAGE:$UID_IN_IMAGE" "$WORK/data" 2>/dev/null; then chmod -R a+rwX "$WORK/data"; fi

# Ports: the app's may be any free one; the torch index's URL is a build argument, so it stays
# 8765 (docker-smoke's default) unless taken: another URL rebuilds every layer of the image.
free_port() {  # $1 if free, else any free port
  "$PY" -c 'import socket, sys
s = socket.socket()
try: s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError: s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])' "$1"
}
export APP_PORT=${APP_PORT:-$(free_port 8000)}
export IDX_PORT=${IDX_PORT:-$(free_port 8765)}
export HEALTH_PATH=/healthz
export RUN_ARGS="-v $WORK/data:/data ${RUN_ARGS:-}"

log "docker-smoke.sh (port $APP_PORT)"
bash "$SMOKE" -- env E2E_QUERIES="$WORK/queries" "$PY" -m pytest -q -p no:cacheprovider tests/e2e/http_check.py

log "check the volume kept the item added over HTTP"
"$PY" - "$WORK" <<'PYEOF'
import json, sys
from pathlib import Path
from infomax.index import EmbeddingIndex
work = Path(sys.argv[1])
n = json.loads((work / "queries" / "manifest.json").read_text())["count"]
index = EmbeddingIndex.load(work / "data" / "index", read_only=True)
try:
    assert len(index) == n + 1, f"{len(index)} items in the volume's index after the container, expected {n + 1}"
    added = [index.get(i) for i in index.ids().tolist() if i >= n]
    assert len(added) == 1 and added[0]["source"] == "e2e:new", added
finally:
    index.close()
print(f"volume: {n + 1} items, the added one included")
PYEOF
log "ok in $((SECONDS - t0)) s"
