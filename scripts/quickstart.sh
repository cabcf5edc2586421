#!/usr/bin/env bash
# Runs one of Switchboard's use cases end to end on this machine, everything throwaway and on
# 127.0.0.1, and prints what happened and how to look at it:
#   scripts/quickstart.sh          rooms per ticket: a local Synapse, Switchboard on SQLite with
#                                  examples/generic-webhook.toml, one signed sample webhook
#   scripts/quickstart.sh rt       Request Tracker: a local RT 5 (installed with apt on first
#                                  use, as root) with Switchboard's scrip, a ticket whose room
#                                  is made, and a message from the room back in the ticket
#   scripts/quickstart.sh stop     stops whatever a quickstart started
# Everything lives in .data/quickstart. Env: QUICKSTART_SYNAPSE_PORT (18008), QUICKSTART_PORT
# (18080), QUICKSTART_RT_PORT (18090).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dir=$root/.data/quickstart
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/switchboard/target}
hs_port=${QUICKSTART_SYNAPSE_PORT:-18008}
sb_port=${QUICKSTART_PORT:-18080}
rt_port=${QUICKSTART_RT_PORT:-18090}
hs=http://127.0.0.1:$hs_port
sb=http://127.0.0.1:$sb_port

log() { echo "quickstart: $*" >&2; }
die() { log "$*"; exit 1; }

stop() {
  if [ -f "$dir/switchboard.pid" ]; then
    kill "$(cat "$dir/switchboard.pid")" 2>/dev/null || true
    rm -f "$dir/switchboard.pid"
  fi
  scripts/synapse.sh stop --data-dir "$dir/synapse" >/dev/null 2>&1 || true
  [ ! -d "$dir/rt" ] || scripts/rt.sh stop "$dir/rt" >/dev/null 2>&1 || true
}

use=${1:-tickets}
case "$use" in
  stop) stop; log "stopped"; exit 0 ;;
  tickets|rt) ;;
  *) sed -n '2,12{s/^# \{0,1\}//;p}' "$0" >&2; exit 2 ;;
esac
stop

# A port something else listens on is said plainly, before anything starts.
taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports="$hs_port $sb_port"
[ "$use" = rt ] && ports="$ports $rt_port"
for p in $ports; do
  taken "$p" && die "port $p on 127.0.0.1 is taken by another program; free it, or choose \
others with QUICKSTART_SYNAPSE_PORT, QUICKSTART_PORT and QUICKSTART_RT_PORT"
done

command -v cargo >/dev/null || die "cargo is needed (https://rustup.rs)"
mkdir -p "$dir"
log "building switchboard ..."
cargo build --quiet --bin switchboard
bin=$CARGO_TARGET_DIR/debug/switchboard

# The local homeserver, with the bot and the people of the use case.
start_synapse() { # LOCALPART:PASSWORD ...
  log "starting a throwaway Synapse on 127.0.0.1:$hs_port ..."
  local args=() u
  for u in "$@"; do args+=(--register "$u"); done
  scripts/synapse.sh start --fresh --port "$hs_port" --data-dir "$dir/synapse" "${args[@]}" \
    >"$dir/synapse.json"
}

# An example config pointed at the local servers. Encryption is off here only so that the
# curl commands below can show the messages; keep it on in real deployments.
configure() { # EXAMPLE [SED-EXPRESSION ...]
  local example=$1; shift
  local extra=() e
  for e in "$@"; do extra+=(-e "$e"); done
  sed -e "s#^data_dir = .*#data_dir = \"$dir/data\"#" \
      -e "s#^listen = .*#listen = \"127.0.0.1:$sb_port\"#" \
      -e "s#^homeserver = .*#homeserver = \"$hs\"#" \
      -e "s#^user = .*#user = \"@switchboard:localhost\"#" \
      -e "s#^encryption = true.*#encryption = false#" \
      -e "s#^encrypted = true.*#encrypted = false#" \
      "${extra[@]}" "$example" >"$dir/switchboard.toml"
}

run_switchboard() {
  rm -rf "$dir/data"
  "$bin" check-config --config "$dir/switchboard.toml" >&2
  "$bin" run --config "$dir/switchboard.toml" >/dev/null 2>"$dir/switchboard.log" &
  echo $! >"$dir/switchboard.pid"
  for _ in $(seq 1 100); do curl -sf "$sb/health" >/dev/null && return 0; sleep 0.1; done
  tail -n 20 "$dir/switchboard.log" >&2
  die "Switchboard did not answer on $sb; its log: $dir/switchboard.log"
}

# The room of a source's ticket, once Switchboard made it (`/link` answers with it).
wait_room() { # SOURCE TICKET
  local room="" _
  for _ in $(seq 1 150); do
    room=$(curl -s "$sb/link/$1/$2" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("room_id",""))' 2>/dev/null || true)
    [ -n "$room" ] && { echo "$room"; return 0; }
    sleep 0.2
  done
  tail -n 20 "$dir/switchboard.log" >&2
  die "no room after 30 s; see $dir/switchboard.log"
}

login() { # LOCALPART PASSWORD
  curl -s -X POST "$hs/_matrix/client/v3/login" -H 'Content-Type: application/json' \
    -d "{\"type\":\"m.login.password\",\"identifier\":{\"type\":\"m.id.user\",\"user\":\"$1\"},\"password\":\"$2\"}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}

quote() { python3 -c "import urllib.parse,sys; print(urllib.parse.quote(sys.argv[1]))" "$1"; }

# Joins ROOM as the token's user and prints its name, topic and messages.
show_room() { # ROOM TOKEN
  local enc msgs _
  enc=$(quote "$1")
  curl -s -X POST "$hs/_matrix/client/v3/join/$enc" -H "Authorization: Bearer $2" \
    -H 'Content-Type: application/json' -d '{}' >/dev/null
  for _ in $(seq 1 50); do
    msgs=$(curl -s "$hs/_matrix/client/v3/rooms/$enc/messages?dir=f&limit=50" -H "Authorization: Bearer $2")
    echo "$msgs" | grep -q '"m.room.message"' && break
    sleep 0.2
  done
  echo "  name:     $(curl -s "$hs/_matrix/client/v3/rooms/$enc/state/m.room.name/" -H "Authorization: Bearer $2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["name"])')"
  echo "  topic:    $(curl -s "$hs/_matrix/client/v3/rooms/$enc/state/m.room.topic/" -H "Authorization: Bearer $2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["topic"])')"
  echo "$msgs" | python3 -c '
import json, sys
for e in json.load(sys.stdin)["chunk"]:
    if e["type"] == "m.room.message":
        print("  message:  " + e["content"]["body"].replace("\n", "\n            "))'
}

tickets() {
  start_synapse switchboard:bot-password alice:alice-password
  export SWITCHBOARD_BOT_PASSWORD=bot-password WEBHOOK_SECRET=quickstart-secret \
    SWITCHBOARD_DATA_SECRET=quickstart-data-secret
  configure examples/generic-webhook.toml
  run_switchboard

  local body sig room alice_token
  body=$(cat examples/payloads/ticket-opened.json)
  sig=$(printf '%s' "$body" | python3 -c 'import hmac,hashlib,sys; print(hmac.new(b"quickstart-secret", sys.stdin.buffer.read(), hashlib.sha256).hexdigest())')
  log "POST /hooks/tickets (ticket 2026-1042, signed):"
  curl -sS -X POST "$sb/hooks/tickets" -H 'Content-Type: application/json' \
    -H "X-Signature-256: sha256=$sig" --data-binary "$body" >&2
  echo >&2
  room=$(wait_room tickets 2026-1042)
  alice_token=$(login alice alice-password)
  echo
  echo "Switchboard made room $room for ticket 2026-1042"
  show_room "$room" "$alice_token"
  cat <<TXT

Look at it yourself:
  curl -s '$hs/_matrix/client/v3/rooms/$(quote "$room")/messages?dir=b' -H 'Authorization: Bearer $alice_token'
  curl -sI $sb/link/tickets/2026-1042        # the "open chat" redirect
  or log in to $hs with any Matrix client as alice / alice-password
Close the ticket (a signed webhook with status "closed"; see docs/webhook.md):
  body='{"ticket":{"id":"2026-1042","status":"closed"}}'
  curl -X POST $sb/hooks/tickets -H "X-Signature-256: sha256=\$(printf %s "\$body" | openssl dgst -sha256 -hmac quickstart-secret -r | cut -d' ' -f1)" -d "\$body"
Config: $dir/switchboard.toml   Log: $dir/switchboard.log
Stop: scripts/quickstart.sh stop
TXT
}

rt() {
  # RT's user `agent` is @agent:localhost by the example's template; the customer is mapped
  # by its table.
  start_synapse switchboard:bot-password agent:agent-password carl:carl-password
  log "starting a throwaway Request Tracker on 127.0.0.1:$rt_port (its first install takes minutes) ..."
  scripts/rt.sh start "$dir/rt" "$rt_port" >"$dir/rt.json" || die "RT did not start; see $dir/rt"
  local rt_url token
  rt_url=$(python3 -c "import json; print(json.load(open('$dir/rt.json'))['url'])")
  token=$(python3 -c "import json; print(json.load(open('$dir/rt.json'))['switchboard']['token'])")
  export SWITCHBOARD_BOT_PASSWORD=bot-password RT_WEBHOOK_SECRET=quickstart-rt-secret \
    RT_TOKEN=$token SWITCHBOARD_DATA_SECRET=quickstart-data-secret
  configure examples/request-tracker.toml \
    "s#^url = .*#url = \"$rt_url\"#" \
    "s#@{{ name }}:example.org#@{{ name }}:localhost#" \
    "s#^\"carl@example.com\" = .*#\"customer@switchboard.test\" = \"@carl:localhost\"#"
  run_switchboard
  scripts/rt.sh queue "$dir/rt" Support "$sb/hooks/rt" quickstart-rt-secret >/dev/null

  log "a ticket in RT's queue Support (made as RT's root) for Carl Customer, owned by agent:"
  local id room agent_token enc
  id=$(scripts/rt.sh api "$dir/rt" POST /ticket '{"Queue": "Support", "Subject": "VPN down",
    "Owner": "agent", "Requestor": "customer@switchboard.test",
    "Content": "Since 9:00 the VPN rejects me.", "ContentType": "text/plain"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  room=$(wait_room rt "$id")
  agent_token=$(login agent agent-password)
  echo
  echo "Switchboard made room $room for RT ticket #$id, with agent (admin) and carl invited"
  show_room "$room" "$agent_token"

  log "agent answers in the room; the message becomes a comment in the ticket:"
  enc=$(quote "$room")
  curl -s -X PUT "$hs/_matrix/client/v3/rooms/$enc/send/m.room.message/quickstart-1" \
    -H "Authorization: Bearer $agent_token" -H 'Content-Type: application/json' \
    -d '{"msgtype": "m.text", "body": "Restarting the gateway, one moment."}' >/dev/null
  local said="" _
  for _ in $(seq 1 100); do
    said=$(scripts/rt.sh api "$dir/rt" GET "/ticket/$id/history?fields=Type,Creator" | python3 -c '
import json, sys
for t in json.load(sys.stdin)["items"]:
    if t["Type"] == "Comment" and t["Creator"]["id"] == "switchboard":
        print("Comment by switchboard (transaction %s)" % t["id"])' || true)
    [ -n "$said" ] && break
    sleep 0.2
  done
  [ -n "$said" ] || die "the room's message did not reach RT; see $dir/switchboard.log"
  echo "  in RT:    $said"
  cat <<TXT

Look at it yourself:
  RT:     $rt_url/Ticket/Display.html?id=$id   (root / password)
  Matrix: log in to $hs with any Matrix client as agent / agent-password or carl / carl-password
Reply in RT and watch the room:
  scripts/rt.sh api $dir/rt POST /ticket/$id/correspond '{"Content": "Fixed, please retry.", "ContentType": "text/plain"}'
Resolve the ticket (the room is closed and renamed, its transcript written to the ticket):
  scripts/rt.sh api $dir/rt PUT /ticket/$id '{"Status": "resolved"}'
Config: $dir/switchboard.toml   Log: $dir/switchboard.log
Stop: scripts/quickstart.sh stop
TXT
}

"$use"
