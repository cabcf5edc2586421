#!/usr/bin/env bash
# redmine.sh - throwaway, loopback-only Redmine 5 (Debian's redmine package, SQLite, served
# by thin) for Switchboard's integration tests. Not for production.
#
#   scripts/redmine.sh start DIR PORT   installs Redmine if needed, starts an instance whose
#                                       database is DIR/redmine.sqlite3 and prints
#                                       DIR/state.json
#   scripts/redmine.sh stop  DIR [--wipe]
#   scripts/redmine.sh api   DIR METHOD PATH [JSON]   REST as the admin; PATH like /issues.json
#
# The database has REST enabled, the trackers `Support` and `Bug` with the statuses New,
# In Progress and Closed (every move between them allowed), the issue field `Chat` (yes or
# no), the user field `Matrix ID`, and two administrators with API keys:
# `admin` (what Switchboard writes as) and `agent` (Alice Agent, a person writing in
# Redmine). Projects are made by the tests. Needs root (apt). Env: SWITCHBOARD_CACHE
# (~/.cache/switchboard).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${SWITCHBOARD_CACHE:-$HOME/.cache/switchboard}
RM=/usr/share/redmine
PKGS="redmine redmine-sqlite thin curl"

log() { echo "redmine.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,15{s/^# \{0,1\}//;p}' "$0" >&2; exit 2; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }
alive() { [ -r "/proc/$1/stat" ] && ! awk '{exit !($3=="Z")}' "/proc/$1/stat"; }

# Debian 12's ruby 3.1 point release ships a bundler that takes gems installed by Debian
# packages for deleted when their gem directory is missing, so the package's own
# `bundle install --local` fails ("Could not find racc-1.6.2.gem"). Empty directories mend it.
mend_gem_dirs() {
  command -v ruby >/dev/null || return 0
  ruby -e 'Gem::Specification.each { |s| next if s.default_gem?; d = s.full_gem_path
             puts d if d.include?("rubygems-integration") && !File.directory?(d) }' |
    while read -r d; do mkdir -p "$d"; done
}

ensure_packages() {
  mkdir -p "$CACHE"
  (
    flock -w 900 9 || die "timed out waiting for $CACHE/redmine-install.lock"
    local missing=0 p
    for p in $PKGS; do installed "$p" || missing=1; done
    if [ "$missing" = 1 ]; then
      [ "$(id -u)" = 0 ] || die "installing Redmine needs root (apt-get install $PKGS)"
      log "installing $PKGS (~1 min on a bare system) ..."
      export DEBIAN_FRONTEND=noninteractive
      # The package's own instance gets a SQLite database; ours are separate files.
      printf '%s\n' \
        'redmine redmine/current-instances string default' \
        'redmine redmine/instances/default/dbconfig-install boolean true' \
        'redmine redmine/instances/default/database-type select sqlite3' \
        'redmine redmine/instances/default/default-language select en' |
        debconf-set-selections 2>/dev/null || true
      # Another install (RT's, started beside this one) is waited for, not failed on.
      # Its dependencies first, so that the gem directories can be mended before Redmine's
      # own setup runs.
      local deps
      deps=$(apt-get install -s --no-install-recommends $PKGS 2>/dev/null |
        awk '/^Inst / && $3 !~ /^\[/ {print $2}' | grep -vx redmine || true)
      if [ -z "$deps" ]; then
        apt-get -o DPkg::Lock::Timeout=900 update -qq >&2
        deps=$(apt-get install -s --no-install-recommends $PKGS |
          awk '/^Inst / && $3 !~ /^\[/ {print $2}' | grep -vx redmine || true)
      fi
      [ -z "$deps" ] || apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends $deps >&2 ||
        die "apt-get install failed"
      mend_gem_dirs
      apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends $PKGS >&2 || true
      if ! installed redmine; then
        mend_gem_dirs
        dpkg --configure -a >&2 || die "configuring the redmine package failed"
      fi
      installed redmine && installed thin || die "installing $PKGS failed"
    fi
    # Installing any ruby package later runs Redmine's trigger, which may leave it without
    # a Gemfile.lock (the same bundler fault): made again when it lacks thin.
    mend_gem_dirs
    local lock=/var/lib/redmine/Gemfile.lock
    if [ ! -s "$lock" ] || ! grep -q '^    thin ' "$lock"; then
      log "writing $lock again"
      rm -f "$lock"
      (cd "$RM" && bundle install --local --quiet >&2) || die "bundle install --local failed"
    fi
  ) 9>"$CACHE/redmine-install.lock"
}

# Redmine with the instance's database replaced by `$1` (Rails takes DATABASE_URL over
# database.yml).
redmine_env() { # DB DIR
  export RAILS_ENV=production REDMINE_INSTANCE=default DATABASE_URL="sqlite3:$1" \
    HOME="$2" LANG=C.UTF-8
}

# The settings, tracker, statuses and users every test database starts with.
SETUP_RB='
Redmine::DefaultData::Loader.load("en") if Redmine::DefaultData::Loader.no_data?
Setting.rest_api_enabled = "1"
Setting.notified_events = []
admin = User.find_by(login: "admin")
admin.must_change_passwd = false
admin.save!(validate: false)
admin.api_key
agent = User.find_by(login: "agent") || User.new(firstname: "Alice", lastname: "Agent",
  mail: "agent@redmine.test").tap { |u| u.login = "agent"; u.admin = true;
  u.password = u.password_confirmation = "agent-password"; u.save! }
agent.api_key
statuses = ["New", "In Progress", "Closed"].map do |name|
  IssueStatus.find_by(name: name) || IssueStatus.create!(name: name, is_closed: name == "Closed")
end
trackers = ["Support", "Bug"].map do |name|
  Tracker.find_by(name: name) || Tracker.create!(name: name, default_status: statuses.first)
end
Role.givable.each do |role|
  trackers.product(statuses.permutation(2).to_a).each do |tracker, (from, to)|
    WorkflowTransition.find_or_create_by!(tracker_id: tracker.id, role_id: role.id,
      old_status_id: from.id, new_status_id: to.id, author: false, assignee: false)
  end
end
IssueCustomField.find_by(name: "Chat") || IssueCustomField.create!(name: "Chat",
  field_format: "list", possible_values: ["yes", "no"], is_for_all: true,
  trackers: trackers, visible: true)
UserCustomField.find_by(name: "Matrix ID") || UserCustomField.create!(name: "Matrix ID",
  field_format: "string", visible: true)
'

start() {
  [ $# -ge 2 ] || usage
  local dir port version template pid
  dir=$(realpath -m "$1"); port=$2
  ensure_packages
  mkdir -p "$dir/home"
  if [ -f "$dir/thin.pid" ] && alive "$(cat "$dir/thin.pid")"; then
    die "an instance is running in $dir: stop it first"
  fi
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && die "port $port is in use"
  version=$(dpkg-query -W -f='${Version}' redmine)
  # A new database takes ~30 s to migrate and fill: done once per version, then copied.
  template=$CACHE/redmine-$version-$(printf '%s' "$SETUP_RB" | sha256sum | cut -c1-12).sqlite3
  if [ ! -s "$dir/redmine.sqlite3" ]; then
    (
      flock -w 300 9 || die "timed out waiting for $template.lock"
      if [ ! -s "$template" ]; then
        log "making Redmine's database (once per version) ..."
        rm -f "$template.tmp"
        redmine_env "$template.tmp" "$dir/home"
        # SCHEMA=/dev/null: db:migrate would write db/schema.rb in the read-only package.
        (cd "$RM" && SCHEMA=/dev/null bundle exec rake db:migrate &&
          bundle exec rails runner "$SETUP_RB") >"$dir/setup.log" 2>&1 ||
          { tail -n 30 "$dir/setup.log" >&2; die "making the database failed"; }
        mv "$template.tmp" "$template"
      fi
    ) 9>"$template.lock"
    cp "$template" "$dir/redmine.sqlite3"
  fi
  redmine_env "$dir/redmine.sqlite3" "$dir/home"
  : >"$dir/thin.log"
  (cd "$RM" && exec setsid bundle exec thin start -e production -a 127.0.0.1 -p "$port" \
    </dev/null >>"$dir/thin.log" 2>&1) &
  pid=$!
  echo "$pid" >"$dir/thin.pid"
  local keys admin_key
  keys=$(sqlite3_keys "$dir/redmine.sqlite3")
  admin_key=${keys%% *}
  local code=000
  for _ in $(seq 1 480); do
    alive "$pid" || { tail -n 30 "$dir/thin.log" >&2; die "thin exited"; }
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "X-Redmine-API-Key: $admin_key" \
      "http://127.0.0.1:$port/users/current.json" || true)
    [ "$code" = 200 ] && break
    sleep 0.25
  done
  [ "$code" = 200 ] || { stop "$dir"; die "Redmine did not answer in 120 s (last HTTP $code)"; }
  local get
  get() { curl -sf -H "X-Redmine-API-Key: $admin_key" "http://127.0.0.1:$port$1"; }
  ruby -rjson -e '
    port, dir, version, keys, trackers, statuses, roles, fields, users = ARGV
    admin, agent = keys.split(" ")
    by_name = ->(list) { list.map { |x| [x["name"], x["id"]] }.to_h }
    t = by_name.(JSON.parse(trackers)["trackers"])
    t["Support"] or abort "no tracker"
    puts JSON.pretty_generate(url: "http://127.0.0.1:#{port}", dir: dir, version: version,
      admin: { login: "admin", key: admin }, agent: { login: "agent", key: agent },
      tracker_id: t["Support"], trackers: t,
      statuses: by_name.(JSON.parse(statuses)["issue_statuses"]),
      roles: by_name.(JSON.parse(roles)["roles"]),
      custom_fields: by_name.(JSON.parse(fields)["custom_fields"]),
      users: JSON.parse(users)["users"].map { |u| [u["login"], u["id"]] }.to_h)' \
    "$port" "$dir" "$version" "$keys" "$(get /trackers.json)" "$(get /issue_statuses.json)" \
    "$(get /roles.json)" "$(get /custom_fields.json)" "$(get /users.json)" \
    >"$dir/state.json"
  chmod 600 "$dir/state.json"
  cat "$dir/state.json"
}

# The API keys of admin and agent, as "ADMIN AGENT".
sqlite3_keys() { # DB
  ruby -e '
    require "sqlite3"
    db = SQLite3::Database.new(ARGV[0])
    key = ->(login) { db.get_first_value("SELECT t.value FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.action = ? AND u.login = ?", ["api", login]) }
    puts [key.("admin"), key.("agent")].join(" ")' "$1"
}

stop() {
  [ $# -ge 1 ] || usage
  local dir=$1 pid
  if [ -f "$dir/thin.pid" ]; then
    pid=$(cat "$dir/thin.pid")
    if [ -n "$pid" ] && alive "$pid"; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
      alive "$pid" && kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$dir/thin.pid"
  fi
  [ "${2:-}" = --wipe ] && rm -rf "$dir"
  return 0
}

api() {
  [ $# -ge 3 ] || usage
  local dir=$1 method=$2 path=$3 body=${4:-} url key
  url=$(ruby -rjson -e 'puts JSON.parse(File.read(ARGV[0]))["url"]' "$dir/state.json")
  key=$(ruby -rjson -e 'puts JSON.parse(File.read(ARGV[0]))["admin"]["key"]' "$dir/state.json")
  curl -sS -X "$method" -H "X-Redmine-API-Key: $key" -H 'Content-Type: application/json' \
    ${body:+--data-binary "$body"} "$url$path"
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
  start) start "$@" ;;
  stop) stop "$@" ;;
  api) api "$@" ;;
  *) usage ;;
esac
