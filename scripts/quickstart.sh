#!/usr/bin/env bash
# Runs Switchboard's main job end to end on this machine: a throwaway local Synapse, Switchboard
# on SQLite with the example config, and one signed sample webhook. Prints the room it made
# and how to look at it. Everything lives in .data/quickstart; `scripts/quickstart.sh stop`
# stops both servers.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dir=$root/.data/quickstart
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/switchboard/target}
hs_port=${QUICKSTART_SYNAPSE_PORT:-18008}
sb_port=${QUICKSTART_PORT:-18080}

log() { echo "quickstart: $*" >&2; }

stop() {
  if [ -f "$dir/switchboard.pid" ]; then
    kill "$(cat "$dir/switchboard.pid")" 2>/dev/null || true
    rm -f "$dir/switchboard.pid"
  fi
  scripts/synapse.sh stop --data-dir "$dir/synapse" >/dev/null 2>&1 || true
}
if [ "${1:-}" = stop ]; then stop; log "stopped"; exit 0; fi
stop

command -v cargo >/dev/null || { log "cargo is needed (https://rustup.rs)"; exit 1; }
mkdir -p "$dir"
log "building switchboard ..."
cargo build --quiet --bin switchboard
bin=$CARGO_TARGET_DIR/debug/switchboard

log "starting a throwaway Synapse on 127.0.0.1:$hs_port ..."
scripts/synapse.sh start --fresh --port "$hs_port" --data-dir "$dir/synapse" \
  --register switchboard:bot-password --register alice:alice-password >"$dir/synapse.json"

# The example config, pointed at the local homeserver. Encryption is off here only so that
# the curl commands below can show the messages; keep it on in real deployments.
export SWITCHBOARD_BOT_PASSWORD=bot-password WEBHOOK_SECRET=quickstart-secret \
  SWITCHBOARD_DATA_SECRET=quickstart-data-secret
sed -e "s#^data_dir = .*#data_dir = \"$dir/data\"#" \
    -e "s#^listen = .*#listen = \"127.0.0.1:$sb_port\"#" \
    -e "s#^homeserver = .*#homeserver = \"http://127.0.0.1:$hs_port\"#" \
    -e "s#^user = .*#user = \"@switchboard:localhost\"#" \
    -e "s#^encryption = true.*#encryption = false#" \
    examples/generic-webhook.toml >"$dir/switchboard.toml"
rm -rf "$dir/data"
"$bin" check-config --config "$dir/switchboard.toml" >&2
"$bin" run --config "$dir/switchboard.toml" >/dev/null 2>"$dir/switchboard.log" &
echo $! >"$dir/switchboard.pid"
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$sb_port/health" >/dev/null && break; sleep 0.1; done

body=$(cat examples/payloads/ticket-opened.json)
sig=$(printf '%s' "$body" | python3 -c 'import hmac,hashlib,sys; print(hmac.new(b"quickstart-secret", sys.stdin.buffer.read(), hashlib.sha256).hexdigest())')
log "POST /hooks/tickets (ticket 2026-1042, signed):"
curl -sS -X POST "http://127.0.0.1:$sb_port/hooks/tickets" -H 'Content-Type: application/json' \
  -H "X-Signature-256: sha256=$sig" --data-binary "$body" >&2
echo >&2

room=""
for _ in $(seq 1 150); do
  room=$(curl -s "http://127.0.0.1:$sb_port/link/tickets/2026-1042" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("room_id",""))' 2>/dev/null || true)
  [ -n "$room" ] && break
  sleep 0.2
done
[ -n "$room" ] || { log "no room after 30 s; see $dir/switchboard.log"; tail -n 20 "$dir/switchboard.log" >&2; exit 1; }

alice_token=$(python3 -c "import json; print(json.load(open('$dir/synapse.json'))['users'][1]['access_token'])" 2>/dev/null || true)
hs=http://127.0.0.1:$hs_port
enc_room=$(python3 -c "import urllib.parse,sys; print(urllib.parse.quote(sys.argv[1]))" "$room")
if [ -z "$alice_token" ]; then
  alice_token=$(curl -s -X POST "$hs/_matrix/client/v3/login" -H 'Content-Type: application/json' \
    -d '{"type":"m.login.password","identifier":{"type":"m.id.user","user":"alice"},"password":"alice-password"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
fi
curl -s -X POST "$hs/_matrix/client/v3/join/$enc_room" -H "Authorization: Bearer $alice_token" -H 'Content-Type: application/json' -d '{}' >/dev/null
for _ in $(seq 1 50); do
  msgs=$(curl -s "$hs/_matrix/client/v3/rooms/$enc_room/messages?dir=b&limit=20" -H "Authorization: Bearer $alice_token")
  echo "$msgs" | grep -q '"m.room.message"' && break
  sleep 0.2
done
cat <<TXT

Switchboard made room $room for ticket 2026-1042
  name:    $(curl -s "$hs/_matrix/client/v3/rooms/$enc_room/state/m.room.name/" -H "Authorization: Bearer $alice_token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["name"])')
  topic:   $(curl -s "$hs/_matrix/client/v3/rooms/$enc_room/state/m.room.topic/" -H "Authorization: Bearer $alice_token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["topic"])')
  message: $(echo "$msgs" | python3 -c 'import json,sys; print([e["content"]["body"] for e in json.load(sys.stdin)["chunk"] if e["type"]=="m.room.message"])')

Look at it yourself:
  curl -s '$hs/_matrix/client/v3/rooms/$enc_room/messages?dir=b' -H 'Authorization: Bearer $alice_token'
  curl -sI http://127.0.0.1:$sb_port/link/tickets/2026-1042        # the "open chat" redirect
  or log in to $hs with any Matrix client as alice / alice-password
Close the ticket (a signed webhook with status "closed"; see docs/webhook.md):
  body='{"ticket":{"id":"2026-1042","status":"closed"}}'
  curl -X POST http://127.0.0.1:$sb_port/hooks/tickets -H "X-Signature-256: sha256=\$(printf %s "\$body" | openssl dgst -sha256 -hmac quickstart-secret -r | cut -d' ' -f1)" -d "\$body"
Config: $dir/switchboard.toml   Log: $dir/switchboard.log
Stop: scripts/quickstart.sh stop
TXT
