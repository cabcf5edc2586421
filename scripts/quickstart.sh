#!/usr/bin/env bash
# Runs one of Switchboard's use cases end to end on this machine, everything throwaway and on
# 127.0.0.1, and prints what happened and how to look at it:
#   scripts/quickstart.sh          rooms per ticket: a local Synapse, Switchboard on SQLite with
#                                  examples/generic-webhook.toml, one signed sample webhook
#   scripts/quickstart.sh helpdesk the Matrix DM helpdesk: a customer's direct chat with the
#                                  bot becomes a thread in the operators' backoffice room, and
#                                  an operator's answer there reaches the customer
#   scripts/quickstart.sh pretix   event registration: a local pretix (installed from PyPI on
#                                  first use, ~4 min), an order paid, its attendee invited into
#                                  the event's room
#   scripts/quickstart.sh rt       Request Tracker: a local RT 5 (installed with apt on first
#                                  use, as root) with Switchboard's scrip, a ticket whose room
#                                  is made, and a message from the room back in the ticket
#   scripts/quickstart.sh stop     stops whatever a quickstart started
# Everything lives in .data/quickstart. Env: QUICKSTART_SYNAPSE_PORT (18008), QUICKSTART_PORT
# (18080), QUICKSTART_RT_PORT (18090), QUICKSTART_PRETIX_PORT (18091).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dir=$root/.data/quickstart
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/switchboard/target}
hs_port=${QUICKSTART_SYNAPSE_PORT:-18008}
sb_port=${QUICKSTART_PORT:-18080}
rt_port=${QUICKSTART_RT_PORT:-18090}
pretix_port=${QUICKSTART_PRETIX_PORT:-18091}
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
  [ ! -d "$dir/pretix" ] || scripts/pretix.sh stop "$dir/pretix" >/dev/null 2>&1 || true
}

use=${1:-tickets}
case "$use" in
  stop) stop; log "stopped"; exit 0 ;;
  tickets|helpdesk|pretix|rt) ;;
  *) sed -n '2,18{s/^# \{0,1\}//;p}' "$0" >&2; exit 2 ;;
esac
stop

# A port something else listens on is said plainly, before anything starts.
taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports="$hs_port $sb_port"
[ "$use" = rt ] && ports="$ports $rt_port"
[ "$use" = pretix ] && ports="$ports $pretix_port"
for p in $ports; do
  taken "$p" && die "port $p on 127.0.0.1 is taken by another program; free it, or choose \
others with QUICKSTART_SYNAPSE_PORT, QUICKSTART_PORT, QUICKSTART_RT_PORT and \
QUICKSTART_PRETIX_PORT"
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
  # An example without an [http] table listens on the default port: this one instead.
  grep -q '^listen = ' "$example" ||
    printf '\n[http]\nlisten = "127.0.0.1:%s"\n' "$sb_port" >>"$dir/switchboard.toml"
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

# A client-server API call as the token's user; prints the answer. PATH below /_matrix/client/v3.
mx() { # TOKEN METHOD PATH [JSON]
  curl -sS -X "$2" "$hs/_matrix/client/v3$3" -H "Authorization: Bearer $1" \
    -H 'Content-Type: application/json' ${4:+-d "$4"}
}

# Waits until USER's membership in ROOM, as the token's user sees it, is WANT.
wait_membership() { # TOKEN ROOM USER WANT WHAT
  local _
  for _ in $(seq 1 150); do
    mx "$1" GET "/rooms/$(quote "$2")/state/m.room.member/$(quote "$3")" |
      grep -q "\"membership\": *\"$4\"" && return 0
    sleep 0.2
  done
  tail -n 20 "$dir/switchboard.log" >&2
  die "$5 did not happen within 30 s; see $dir/switchboard.log"
}

# The first message in ROOM (as the token's user sees it) whose body contains TEXT: prints
# its event ID and, if it is in a thread, the thread's root.
wait_message() { # TOKEN ROOM TEXT WHAT
  local found _
  for _ in $(seq 1 150); do
    found=$(mx "$1" GET "/rooms/$(quote "$2")/messages?dir=b&limit=50" | python3 -c '
import json, sys
for e in json.load(sys.stdin).get("chunk", []):
    c = e.get("content", {})
    if e["type"] == "m.room.message" and sys.argv[1] in c.get("body", ""):
        rel = c.get("m.relates_to", {})
        print(e["event_id"], rel.get("event_id", "") if rel.get("rel_type") == "m.thread" else "")
        break' "$3" 2>/dev/null || true)
    [ -n "$found" ] && { echo "$found"; return 0; }
    sleep 0.2
  done
  tail -n 20 "$dir/switchboard.log" >&2
  die "$4 did not arrive within 30 s; see $dir/switchboard.log"
}

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

helpdesk() {
  start_synapse switchboard:bot-password carla:carla-password otto:otto-password
  local otto_token carla_token backoffice dm event root
  otto_token=$(login otto otto-password)
  carla_token=$(login carla carla-password)
  log "otto makes the backoffice room and invites the bot ..."
  backoffice=$(mx "$otto_token" POST /createRoom '{"name": "Helpdesk backoffice",
    "preset": "private_chat", "invite": ["@switchboard:localhost"]}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["room_id"])')
  export SWITCHBOARD_BOT_PASSWORD=bot-password SWITCHBOARD_DATA_SECRET=quickstart-data-secret
  configure examples/matrix-dm.toml "s#^backoffice_room = .*#backoffice_room = \"$backoffice\"#"
  run_switchboard
  wait_membership "$otto_token" "$backoffice" @switchboard:localhost join "the bot joining the backoffice room"

  log "carla opens a direct chat with the bot and writes:"
  dm=$(mx "$carla_token" POST /createRoom '{"preset": "trusted_private_chat", "is_direct": true,
    "invite": ["@switchboard:localhost"]}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["room_id"])')
  mx "$carla_token" PUT "/rooms/$(quote "$dm")/send/m.room.message/quickstart-1" \
    '{"msgtype": "m.text", "body": "Hello, my order 1042 has not arrived."}' >/dev/null
  read -r event root < <(wait_message "$otto_token" "$backoffice" "order 1042 has not arrived" \
    "carla's message in the backoffice room")
  [ -n "$root" ] || root=$event
  echo
  echo "Carla's message is in a thread of the backoffice room $backoffice:"
  mx "$otto_token" GET "/rooms/$(quote "$backoffice")/event/$(quote "$root")" |
    python3 -c 'import json,sys; print("  thread:   " + json.load(sys.stdin)["content"]["body"])'
  echo "  message:  Hello, my order 1042 has not arrived."

  log "otto answers in the thread:"
  mx "$otto_token" PUT "/rooms/$(quote "$backoffice")/send/m.room.message/quickstart-2" "$(python3 -c '
import json, sys
root = sys.argv[1]
print(json.dumps({"msgtype": "m.text", "body": "It left our warehouse today; tracking follows.",
                  "m.relates_to": {"rel_type": "m.thread", "event_id": root, "is_falling_back": True,
                                   "m.in_reply_to": {"event_id": root}}}))' "$root")" >/dev/null
  wait_message "$carla_token" "$dm" "It left our warehouse today" "otto's answer in carla's chat" >/dev/null
  echo "Otto's answer reached carla's direct chat $dm:"
  echo "  message:  It left our warehouse today; tracking follows."
  cat <<TXT

Look at it yourself: log in to $hs with any Matrix client (Element: "Edit" the homeserver)
  as carla / carla-password (the customer: the direct chat with @switchboard:localhost)
  or otto / otto-password (the operator: the room "Helpdesk backoffice", its thread)
In the thread, otto can run !ho done (closes the request), !ho note, !ho rename, !ho help.
Config: $dir/switchboard.toml   Log: $dir/switchboard.log
Stop: scripts/quickstart.sh stop
TXT
}

pretix() {
  start_synapse switchboard:bot-password alice:alice-password dana:dana-password
  log "starting a throwaway pretix on 127.0.0.1:$pretix_port (its first install takes minutes) ..."
  scripts/pretix.sh start "$dir/pretix" "$pretix_port" --fresh >"$dir/pretix.json" ||
    die "pretix did not start; see $dir/pretix"
  local alice_token room code api_token
  alice_token=$(login alice alice-password)
  log "alice, the organiser, makes the event's room; the bot may invite and remove people:"
  room=$(mx "$alice_token" POST /createRoom '{"name": "DemoCon lobby", "preset": "private_chat",
    "invite": ["@switchboard:localhost"],
    "power_level_content_override": {"users": {"@switchboard:localhost": 50}}}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["room_id"])')
  api_token=$(python3 -c "import json; print(json.load(open('$dir/pretix.json'))['token'])")
  export SWITCHBOARD_BOT_PASSWORD=bot-password SWITCHBOARD_DATA_SECRET=quickstart-data-secret \
    PRETIX_WEBHOOK_SECRET=quickstart-pretix-secret PRETIX_API_TOKEN=$api_token
  # The local pretix's organizer `switchboard` and event `conf`, the room above, alice.
  configure examples/pretix.toml \
    "s#^url = .*#url = \"http://127.0.0.1:$pretix_port\"#" \
    "s#^organizer = .*#organizer = \"switchboard\"#" \
    "s#^event = .*#event = \"conf\"#" \
    "s#^rooms = .*#rooms = [\"$room\"]#" \
    "/^items = /d" "/^management_room = /d" \
    "s#^organisers = .*#organisers = [\"@alice:localhost\"]#"
  run_switchboard
  scripts/pretix.sh webhook "$dir/pretix" "$sb/hooks/pretix/quickstart-pretix-secret" >/dev/null

  log "dana orders a ticket, giving @dana:localhost as her Matrix ID; the order is paid:"
  code=$(scripts/pretix.sh order "$dir/pretix" @dana:localhost |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["code"])')
  echo "  order $code: pending"
  scripts/pretix.sh pay "$dir/pretix" "$code" >/dev/null
  echo "  order $code: paid"
  wait_membership "$alice_token" "$room" @dana:localhost invite "dana's invite into the event's room"
  echo
  echo "Switchboard invited @dana:localhost into the event's room $room (DemoCon lobby)"
  cat <<TXT

Look at it yourself:
  pretix: http://127.0.0.1:$pretix_port/control/event/switchboard/conf/orders/$code/   (admin@localhost / admin)
  Matrix: log in to $hs with any Matrix client as dana / dana-password (the invite) or alice / alice-password
Cancel the order (dana's invite is withdrawn):
  scripts/pretix.sh cancel $dir/pretix $code
Another order, paid at once (a free ticket):
  scripts/pretix.sh order $dir/pretix --free @alice:localhost
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
