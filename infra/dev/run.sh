#!/usr/bin/env bash
# `make run`: start the local platform, show it working, keep it running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
DATA_DIR="${TROVELESS_DATA_DIR:-$HOME/.local/share/troveless}"
LOG="$DATA_DIR/up.log"
mkdir -p "$DATA_DIR"

"$BIN/troveless" up --data-dir "$DATA_DIR" 2>&1 | tee "$LOG" &
UP_PID=$!
trap 'kill -INT $(cat "$DATA_DIR/.up.pid" 2>/dev/null) 2>/dev/null || true; wait $UP_PID 2>/dev/null || true' INT TERM EXIT

for _ in $(seq 1 120); do
  if [ -f "$DATA_DIR/platform.json" ] && curl -fsS http://127.0.0.1:8779/ >/dev/null 2>&1; then break; fi
  sleep 0.5
done
"$BIN/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['pid'])" "$DATA_DIR/platform.json" > "$DATA_DIR/.up.pid"

TOKEN=$("$BIN/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['default'])" "$DATA_DIR/tokens.json")
PROJECT=$("$BIN/python" -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['tokens'][d['default']]['project_id'])" "$DATA_DIR/tokens.json")
OSC=("$BIN/openstack" --os-auth-type admin_token --os-endpoint "http://127.0.0.1:8779/v1.0/$PROJECT" --os-token "$TOKEN")

echo
echo "== demo: the Trove API answers =="
echo "\$ curl http://127.0.0.1:8779/"
curl -fsS http://127.0.0.1:8779/; echo
echo "\$ openstack database flavor list"
"${OSC[@]}" database flavor list
echo "\$ troveless selfcheck   (a 3-step workflow through broker, step functions and database)"
"$BIN/troveless" selfcheck --data-dir "$DATA_DIR"
echo "\$ troveless status"
"$BIN/troveless" status --data-dir "$DATA_DIR" || true
echo
echo "The platform keeps running; press Ctrl-C to stop it."
wait $UP_PID
