#!/usr/bin/env bash
# synapse.sh - throwaway, loopback-only Synapse homeserver for Switchboard's integration
# tests, benchmarks and quickstart. Not for production: no TLS, no federation, rate limits
# off, and (with --sqlite-sync normal|off) no crash safety.
#
#   scripts/synapse.sh start [--port PORT] [--data-dir DIR] [--fresh]
#                            [--register LOCALPART:PASSWORD[:admin]]...
#                            [--shared-secret-auth SECRET] [--sqlite-sync full|normal|off]
#   scripts/synapse.sh stop  [--data-dir DIR | --port PORT] [--wipe]
#   scripts/synapse.sh register --data-dir DIR LOCALPART PASSWORD [admin]
#
# `start` prints one JSON document on stdout, everything else goes to stderr. A password may
# contain ':'; a trailing ':admin' makes the user an admin. --shared-secret-auth adds the login
#   {"type": "com.devture.shared_secret_auth", "identifier": {"type": "m.id.user", "user": ID},
#    "token": hex(HMAC-SHA512(SECRET, "@localpart:localhost"))}   (always the full user id)
# Env: SWITCHBOARD_CACHE (~/.cache/switchboard), PYTHON (python3), SYNAPSE_VERSION (latest).
set -euo pipefail

CACHE=${SWITCHBOARD_CACHE:-$HOME/.cache/switchboard}
VENV=$CACHE/synapse-venv
PY=$VENV/bin/python

log() { echo "synapse.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,16{s/^# \{0,1\}//;p}' "$0" >&2; exit 2; }

# One venv shared by every data dir; the lock lets parallel test jobs race to create it.
ensure_venv() { # $1 = 1 if the shared-secret-authenticator module is needed
  mkdir -p "$CACHE"
  (
    flock -w 900 9 || die "timed out waiting for $VENV.lock"
    want=${SYNAPSE_VERSION:-} pip=("$PY" -m pip install -q --disable-pip-version-check)
    have=$("$PY" -c 'import synapse; print(synapse.__version__)' 2>/dev/null || true)
    # Without a pin a cached venv is kept as is: tests should not upgrade Synapse behind our back.
    if [ -z "$have" ] || { [ -n "$want" ] && [ "$have" != "$want" ]; }; then
      log "installing matrix-synapse${want:+==$want} into $VENV (~30 s) ..."
      [ -x "$PY" ] || "${PYTHON:-python3}" -m venv --clear "$VENV"
      "${pip[@]}" "matrix-synapse${want:+==$want}" >&2
    fi
    # Unpinned: a single file on the stable ModuleApi; its dependency never moves Synapse.
    if [ "$1" = 1 ] && ! "$PY" -c 'import shared_secret_authenticator' 2>/dev/null; then
      "${pip[@]}" shared-secret-authenticator >&2
    fi
  ) 9>"$VENV.lock"
}

# Prints data dir $1's Synapse pid if it really runs. Matching the cmdline avoids signalling a
# stranger that reused a stale pid, and counts an unreaped zombie (empty cmdline) as dead.
running_pid() {
  local pid
  pid=$(cat "$1/synapse.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qxF -- "$1/homeserver.yaml" || return 1
  echo "$pid"
}

# Registers users through the shared-secret admin API and prints the JSON answer.
# argv: BASE SECRET DATA PID SSA_SECRET, then (localpart password 0|1) triples; an empty PID
# means the `register` subcommand, which prints only {"user_id"}.
register_and_report() {
  "$PY" - "$@" <<'EOF'
import hashlib, hmac, json, sys, urllib.error, urllib.request
base, secret, data, pid, ssa, *rest = sys.argv[1:]

def call(method, path, body=None):
    req = urllib.request.Request(base + path, json.dumps(body).encode() if body else None,
                                 {"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)

users = []
for i in range(0, len(rest), 3):
    name, password, admin = rest[i], rest[i + 1], rest[i + 2] == "1"
    nonce = call("GET", "/_synapse/admin/v1/register")[1]["nonce"]  # single use
    # The MAC fields are NUL-separated, with no trailing NUL.
    msg = "\0".join([nonce, name, password, "admin" if admin else "notadmin"])
    mac = hmac.new(secret.encode(), msg.encode(), hashlib.sha1).hexdigest()
    st, res = call("POST", "/_synapse/admin/v1/register", {
        "nonce": nonce, "username": name, "password": password, "admin": admin, "mac": mac})
    if st != 200 and res.get("errcode") == "M_USER_IN_USE":
        # Normal on a reused data dir, but the JSON must not promise a password that is stale.
        st, res = call("POST", "/_matrix/client/v3/login", {"type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": name}, "password": password})
        if st != 200:
            sys.exit(f"synapse.sh: {name} exists with another password (start with --fresh)")
    if st != 200:
        sys.exit(f"synapse.sh: registering {name} failed: HTTP {st} {res}")
    users.append({"user_id": res["user_id"], "password": password, "admin": admin})

if not pid:
    print(json.dumps({"user_id": users[0]["user_id"]}))
else:
    print(json.dumps({"base_url": base, "server_name": "localhost", "pid": int(pid),
                      "data_dir": data, "registration_shared_secret": secret,
                      "shared_secret_auth": ssa or None, "users": users}, indent=2))
EOF
}

cmd_start() {
  local port=18008 data="" fresh=0 ssa="" sync=full users=() spec name pw admin
  while [ $# -gt 0 ]; do
    case $1 in
      --port) port=$2; shift 2 ;;
      --data-dir) data=$2; shift 2 ;;
      --fresh) fresh=1; shift ;;
      --register) spec=$2; shift 2
        admin=0; [[ $spec == *:admin ]] && { admin=1; spec=${spec%:admin}; }
        name=${spec%%:*}; pw=${spec#*:}
        [[ $spec == *:* && -n $name && -n $pw ]] || die "--register wants LOCALPART:PASSWORD[:admin]"
        users+=("$name" "$pw" "$admin") ;;
      --shared-secret-auth) ssa=$2; shift 2 ;;
      --sqlite-sync) sync=$2; shift 2 ;;
      *) usage ;;
    esac
  done
  [[ $port =~ ^[0-9]+$ ]] || die "bad port: $port"
  [[ $sync =~ ^(full|normal|off)$ ]] || die "--sqlite-sync wants full|normal|off"
  data=$(realpath -m "${data:-$CACHE/synapse-$port}")
  local base=http://127.0.0.1:$port pid

  # Check before touching anything, so --fresh never wipes a live server's database.
  pid=$(running_pid "$data") && die "Synapse pid $pid already runs on $data; stop it first"
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && die "127.0.0.1:$port is already in use"
  ensure_venv "$([ -n "$ssa" ] && echo 1 || echo 0)"
  [ "$fresh" = 0 ] || rm -rf "$data"
  mkdir -p "$data/media_store"

  # Secrets are made once per data dir: tokens and stored hashes stay valid across restarts.
  [ -f "$data/secrets.env" ] || (umask 077; for k in REG MACAROON FORM; do
    echo "${k}_SECRET=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"; done >"$data/secrets.env")
  # shellcheck disable=SC1091
  . "$data/secrets.env"

  # JSON strings are valid YAML scalars, which keeps odd paths and secrets quoted safely.
  q() { "$PY" -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }
  local rl='{per_second: 1000000, burst_count: 1000000}' modules=""
  [ -n "$ssa" ] && modules="modules:
  - module: shared_secret_authenticator.SharedSecretAuthProvider
    config:
      shared_secret: $(q "$ssa")"
  # Rewritten on every start so the port and options follow the command line.
  cat >"$data/homeserver.yaml" <<EOF
# Generated by scripts/synapse.sh on each start; edits are overwritten.
server_name: localhost
public_baseurl: "$base/"
pid_file: $(q "$data/homeserver.pid")
signing_key_path: $(q "$data/signing.key")
media_store_path: $(q "$data/media_store")
log_config: $(q "$data/log.config")
database: {name: sqlite3, args: {database: $(q "$data/homeserver.db")}}
listeners:
  - {port: $port, bind_addresses: ['127.0.0.1'], type: http, tls: false, x_forwarded: false,
     resources: [{names: [client, openid], compress: false}]}
report_stats: false
enable_registration: false
registration_shared_secret: "$REG_SECRET"
macaroon_secret_key: "$MACAROON_SECRET"
form_secret: "$FORM_SECRET"
# Federation off: no key servers, an empty whitelist, and of the federation API only the
# OpenID userinfo above (identity servers ask it who a token belongs to).
trusted_key_servers: []
suppress_key_server_warning: true
federation_domain_whitelist: []
# The default of 12 costs ~0.4 s per register/login; tests log in a lot.
bcrypt_rounds: 4
# Defaults throttle a busy bot to ~0.2 msg/s; every limiter is raised, not just rc_message.
$(for k in message registration registration_token_validity joins_per_room third_party_invite \
    room_creation admin_redaction 3pid_validation profile key_requests delayed_event_mgmt \
    user_directory media_create reports; do echo "rc_$k: $rl"; done)
rc_login: {address: $rl, account: $rl, failed_attempts: $rl}
rc_joins: {local: $rl, remote: $rl}
rc_invites: {per_room: $rl, per_user: $rl, per_issuer: $rl}
rc_presence: {per_user: $rl}
# A repeated identical /sync is answered from a cache for 2 minutes by default: a client
# polling for new invites would not see one for that long.
caches: {sync_response_cache_duration: 0}
$modules
EOF
  cat >"$data/log.config" <<EOF
version: 1
formatters: {f: {format: '%(asctime)s %(name)s %(levelname)s %(request)s %(message)s'}}
handlers: {file: {class: logging.FileHandler, formatter: f, filename: $(q "$data/homeserver.log")}}
root: {level: WARNING, handlers: [file]}
disable_existing_loggers: false
EOF

  # Synapse sets no PRAGMA synchronous itself, so wrapping sqlite3.connect before it loads is
  # enough to drop the fsync per commit (normal/off). Its own session keeps it alive when the
  # caller's terminal or test runner sends SIGINT/SIGHUP to its process group.
  local t0=$EPOCHREALTIME
  pid=$(SQLITE_SYNC=$sync "$PY" - "$PY" "$data" <<'EOF'
import subprocess, sys
py, data = sys.argv[1:]
launcher = """import os, runpy, sqlite3
mode = os.environ.pop("SQLITE_SYNC", "full").upper()
if mode != "FULL":
    _connect = sqlite3.connect
    def connect(*a, **kw):
        conn = _connect(*a, **kw)
        conn.execute("PRAGMA synchronous = " + mode)
        return conn
    sqlite3.connect = connect
runpy.run_module("synapse.app.homeserver", run_name="__main__", alter_sys=True)
"""
with open(f"{data}/synapse.stdout", "ab") as out:
    p = subprocess.Popen([py, "-c", launcher, "-c", f"{data}/homeserver.yaml"], cwd=data,
                         stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
print(p.pid)
EOF
)
  echo "$pid" >"$data/synapse.pid"
  log "Synapse pid $pid starting on $base (data dir $data)"

  local deadline=$((SECONDS + 90))
  until curl -sf -o /dev/null "$base/_matrix/client/versions"; do
    if ! running_pid "$data" >/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
      kill -KILL "$pid" 2>/dev/null || true
      rm -f "$data/synapse.pid"
      tail -n 30 "$data/synapse.stdout" "$data/homeserver.log" >&2 2>/dev/null || true
      die "Synapse did not come up on $base (see above)"
    fi
    sleep 0.1
  done
  log "ready after $(awk "BEGIN {printf \"%.1f\", $EPOCHREALTIME - $t0}") s"
  echo "$base" >"$data/base_url"   # for `register`, which only gets the data dir

  # A half-set-up server would be left for nobody to stop: a failed start leaves none running.
  register_and_report "$base" "$REG_SECRET" "$data" "$pid" "$ssa" ${users[@]+"${users[@]}"} ||
    { cmd_stop --data-dir "$data"; die "could not register users"; }
}

cmd_stop() {
  local port=18008 data="" wipe=0 pid
  while [ $# -gt 0 ]; do case $1 in
    --data-dir) data=$2; shift 2 ;; --port) port=$2; shift 2 ;; --wipe) wipe=1; shift ;; *) usage ;;
  esac; done
  data=$(realpath -m "${data:-$CACHE/synapse-$port}")
  [ -d "$data" ] || { log "no data dir $data; nothing to stop"; return 0; }
  if pid=$(running_pid "$data"); then
    kill -TERM "$pid"
    for _ in $(seq 200); do running_pid "$data" >/dev/null || break; sleep 0.1; done
    if running_pid "$data" >/dev/null; then
      log "pid $pid ignored SIGTERM for 20 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped pid $pid"
  else
    log "no Synapse running on $data"
  fi
  rm -f "$data/synapse.pid"
  [ "$wipe" = 0 ] || { rm -rf "$data"; log "wiped $data"; }
}

cmd_register() {
  [ "${1:-}" = --data-dir ] && [ $# -ge 4 ] && [ $# -le 5 ] || usage
  local data admin=0
  data=$(realpath -m "$2")
  [ "${5:-}" = admin ] && admin=1
  running_pid "$data" >/dev/null || die "no Synapse running on $data"
  # shellcheck disable=SC1091
  . "$data/secrets.env"
  register_and_report "$(cat "$data/base_url")" "$REG_SECRET" "$data" "" "" "$3" "$4" "$admin"
}

case ${1:-} in
  start | stop | register) sub=$1; shift; "cmd_$sub" "$@" ;;
  *) usage ;;
esac
