#!/usr/bin/env bash
# `make run`: start the local platform, show it working, keep it running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
DATA_DIR="${TROVELESS_DATA_DIR:-$($BIN/python -c "from functions.settings import default_data_dir; print(default_data_dir())")}"
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
echo
echo "== demo: a PostgreSQL instance with a database and a user =="
API="http://127.0.0.1:8779/v1.0/$PROJECT"
PASSFILE="$DATA_DIR/demo-password"
[ -s "$PASSFILE" ] || (umask 077; "$BIN/python" -c "import secrets; print(secrets.token_urlsafe(12))" > "$PASSFILE")
PASS=$(cat "$PASSFILE")
ID=$(curl -fsS -H "X-Auth-Token: $TOKEN" "$API/instances" | "$BIN/python" -c \
  "import json,sys; print(next((i['id'] for i in json.load(sys.stdin)['instances'] if i['name']=='demo-pg' and i['status']!='ERROR'), ''))")
if [ -z "$ID" ]; then
  echo "\$ openstack database instance create demo-pg --flavor 1 --size 1 --datastore postgresql --databases app --users alice:***"
  ID=$("${OSC[@]}" database instance create demo-pg --flavor 1 --size 1 --datastore postgresql \
         --databases app --users "alice:$PASS" -f value -c id)
else
  echo "reusing instance demo-pg ($ID) from an earlier run"
fi
START=$(date +%s.%N)
while :; do
  read -r STATUS OPSTATUS IP < <(curl -fsS -H "X-Auth-Token: $TOKEN" "$API/instances/$ID" | "$BIN/python" -c \
    "import json,sys; i=json.load(sys.stdin)['instance']; print(i['status'], i['operating_status'] or '-', (i.get('ip') or ['-'])[0])")
  ELAPSED=$("$BIN/python" -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):5.1f}')" "$START")
  printf "\r  demo-pg  %-8s %-8s %ss " "$STATUS" "$OPSTATUS" "$ELAPSED"
  [ "$STATUS" = "ACTIVE" ] && [ "$OPSTATUS" = "HEALTHY" ] && break
  if [ "$STATUS" = "ERROR" ]; then echo; echo "the instance failed:"; "${OSC[@]}" database instance show "$ID"; break; fi
  sleep 0.5
done
echo
if [ "$STATUS" = "ACTIVE" ]; then
  echo
  echo "Connect with:   psql postgresql://alice:$PASS@$IP:5432/app"
  echo "(password kept in $PASSFILE; delete with: openstack database instance delete $ID)"
fi
echo
echo "\$ troveless status"
"$BIN/troveless" status --data-dir "$DATA_DIR" || true
echo
echo "The platform keeps running; press Ctrl-C to stop it."
wait $UP_PID
