#!/usr/bin/env python3
"""Chaos test for Switchboard: signed webhooks under crashes and homeserver outages.

Starts a throwaway Synapse (scripts/synapse.sh) and Switchboard with a generic webhook source,
then sends signed webhooks for many tickets at a steady rate, the way real webhook senders do:
every failed request (refused, reset, timed out, non-2xx) is retried with a short backoff until
it gets a 2xx, and a ticket's next webhook is sent only after the previous one was accepted.
Meanwhile Switchboard is killed with SIGKILL and restarted every few seconds, and the
homeserver is frozen (SIGSTOP) or restarted once. Afterwards Switchboard runs undisturbed
until its inbox and outbox are drained, every room of the bot is read back through the
client-server API, and what is in the rooms is compared with what was accepted: lost,
duplicated and out-of-order messages, and tickets with more than one room.

Normally run through scripts/chaos.sh, which finds or builds the binary and cleans up if this
process dies. Python 3 standard library only; PostgreSQL is reached through `psql`.
Exit code: 0 all good, 1 misbehaviour found, 2 the run could not be completed.
"""

import argparse
import collections
import hashlib
import hmac
import http.client
import json
import math
import os
import random
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNAPSE_SH = os.path.join(ROOT, "scripts", "synapse.sh")
SOURCE_ID = "chaos"
BOT_LOCALPART = "chaosbot"
# Every message the driver sends, and nothing else the bot posts, has this shape.
BODY_RE = re.compile(r"^chaos (t\d+) #(\d+)$")
DEFAULT_POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"


def log(msg):
    print(f"chaos: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="scripts/chaos.sh",
        description="Chaos test: signed webhooks into Switchboard while it is SIGKILLed and "
        "restarted and the homeserver stops; then every room is read back and checked for "
        "lost, duplicated and out-of-order messages and extra rooms. See docs/reliability.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--webhooks", type=int, default=10000, help="webhooks to send in all")
    p.add_argument("--tickets", type=int, default=100, help="tickets they are spread over")
    p.add_argument("--rate", type=float, default=50.0, help="webhooks per second, all tickets")
    p.add_argument("--kill-every", type=float, default=2.0,
                   help="SIGKILL and restart Switchboard every this many seconds "
                   "(±25 %% jitter); 0 disables")
    p.add_argument("--homeserver", choices=["stop", "restart", "none"], default="stop",
                   help="homeserver fault, once, starting 20 %% into the sending: stop = "
                   "SIGSTOP/SIGCONT, restart = stop the process and start it again")
    p.add_argument("--outage", type=float, default=30.0,
                   help="seconds the homeserver is frozen or down")
    p.add_argument("--postgres", nargs="?", const=DEFAULT_POSTGRES, metavar="URL",
                   help="use PostgreSQL: a fresh database chaos_<random> is created on the "
                   f"server at URL (without URL: {DEFAULT_POSTGRES}); default SQLite")
    p.add_argument("--request-timeout", type=float, default=10.0,
                   help="seconds a sender waits for one answer before it retries")
    p.add_argument("--send-grace", type=float, default=300.0,
                   help="seconds past the planned end of sending before unaccepted webhooks "
                   "are given up")
    p.add_argument("--drain-timeout", type=float, default=300.0,
                   help="seconds to wait for the inbox and outbox to drain after sending")
    p.add_argument("--seed", type=int, help="seed for the kill jitter and retry backoff")
    p.add_argument("--keep", action="store_true",
                   help="keep the work dir (logs, config, databases) and the PostgreSQL "
                   "database")
    p.add_argument("--work-dir", help="work dir (default: a new temporary dir); a dir you "
                   "name is never deleted")
    p.add_argument("--switchboard-bin", default=default_binary(),
                   help="the switchboard binary (env SWITCHBOARD_BIN)")
    # Set by chaos.sh for the temporary dir it made: remove it at the end unless --keep.
    p.add_argument("--owned-work-dir", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.webhooks < 1 or a.tickets < 1 or a.rate <= 0:
        p.error("--webhooks, --tickets and --rate must be positive")
    if a.tickets > a.webhooks:
        p.error("--tickets must not exceed --webhooks (each ticket needs its opening webhook)")
    return a


def default_binary():
    if os.environ.get("SWITCHBOARD_BIN"):
        return os.environ["SWITCHBOARD_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR",
                            os.path.expanduser("~/.cache/switchboard/target"))
    return os.path.join(target, "release", "switchboard")


# ---------------------------------------------------------------------------------------------
# Homeserver


class Synapse:
    """The throwaway homeserver, driven through scripts/synapse.sh."""

    def __init__(self, data_dir, port):
        self.data_dir, self.port = data_dir, port
        self.base = f"http://127.0.0.1:{port}"
        self.pid = None
        self.frozen = False

    def start(self, fresh, register=()):
        cmd = [SYNAPSE_SH, "start", "--port", str(self.port), "--data-dir", self.data_dir]
        if fresh:
            cmd.append("--fresh")
        for spec in register:
            cmd += ["--register", spec]
        with open(os.path.join(os.path.dirname(self.data_dir), "synapse-sh.log"), "a") as err:
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=err).stdout
        info = json.loads(out)
        self.pid = info["pid"]
        return info

    def stop(self):
        self.thaw()  # a frozen process would not act on SIGTERM
        with open(os.path.join(os.path.dirname(self.data_dir), "synapse-sh.log"), "a") as err:
            subprocess.run([SYNAPSE_SH, "stop", "--data-dir", self.data_dir],
                           stdout=err, stderr=err, check=False)
        self.pid = None

    def freeze(self):
        os.kill(self.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self):
        if self.frozen and self.pid:
            try:
                os.kill(self.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.frozen = False


def matrix_call(base, method, path, token=None, body=None, timeout=60):
    """One client-server API request; returns the decoded JSON answer or raises."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data, headers, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def login(base, localpart, password, device):
    res = matrix_call(base, "POST", "/_matrix/client/v3/login", body={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart},
        "password": password, "device_id": device, "initial_device_display_name": device})
    return res["access_token"]


# ---------------------------------------------------------------------------------------------
# Database: PostgreSQL setup, and the drain and bookkeeping queries for either backend


def psql(url, sql):
    """Runs SQL through psql and returns the rows as lists of strings."""
    out = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                          "-d", url, "-c", sql], check=True, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def with_database(url, name):
    """The server URL with its database replaced by `name` (query string kept)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


class Store:
    """Read-only queries on Switchboard's database, SQLite or PostgreSQL."""

    def __init__(self, sqlite_path=None, pg_url=None):
        self.sqlite_path, self.pg_url = sqlite_path, pg_url

    def rows(self, sql):
        if self.pg_url:
            return psql(self.pg_url, sql)
        # Read-only, so the driver can never hold a write lock Switchboard waits for.
        conn = sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True, timeout=10)
        try:
            return [[str(v) for v in row] for row in conn.execute(sql)]
        finally:
            conn.close()

    def backlog(self):
        """(unprocessed inbox rows, pending outbox rows), or None if it cannot be read yet."""
        try:
            (row,) = self.rows("SELECT (SELECT count(*) FROM inbox WHERE processed_at IS NULL),"
                               " (SELECT count(*) FROM outbox WHERE state = 'pending')")
            return int(row[0]), int(row[1])
        except (sqlite3.Error, subprocess.CalledProcessError, ValueError):
            return None  # not created yet, or busy: ask again

    def bookkeeping(self):
        """What the database says it did: deliveries, actions by state, links, attempts."""
        inbox = int(self.rows(f"SELECT count(*) FROM inbox WHERE source_id = '{SOURCE_ID}'")[0][0])
        states = {s: int(n) for s, n in self.rows(
            "SELECT state, count(*) FROM outbox GROUP BY state")}
        (att,) = self.rows("SELECT coalesce(sum(attempts), 0), coalesce(max(attempts), 0) "
                           "FROM outbox")
        links = int(self.rows(f"SELECT count(*) FROM links WHERE source_id = '{SOURCE_ID}'")[0][0])
        failed = [r[0] for r in self.rows(
            "SELECT coalesce(last_error, '') FROM outbox WHERE state = 'failed' LIMIT 5")]
        return {"inbox_rows": inbox, "outbox": states, "attempts": int(att[0]),
                "max_attempts": int(att[1]), "links": links, "failed_errors": failed}


# ---------------------------------------------------------------------------------------------
# Switchboard process


def write_config(path, *, data_dir, port, homeserver, bot_password, webhook_secret, db_url):
    """A generic webhook source signed with HMAC-SHA256, default rules, encryption off."""
    def q(s):
        return json.dumps(s)  # a JSON string is a valid TOML basic string
    text = f"""# Written by scripts/chaos.py for one chaos run.
data_dir = {q(data_dir)}
data_secret = {q(secrets.token_hex(16))}

[http]
listen = "127.0.0.1:{port}"

[database]
url = {q(db_url)}
retention_days = 0          # keep every record, so the counts at the end are complete

[matrix]
homeserver = {q(homeserver)}
user = "@{BOT_LOCALPART}:localhost"
password = {q(bot_password)}
encryption = false          # plain rooms, so they can be read back as text

[sources.{SOURCE_ID}]
kind = "webhook"

[sources.{SOURCE_ID}.signature]
secret = {q(webhook_secret)}
"""
    with open(path, "w") as f:
        f.write(text)


class Switchboard:
    """Starts, kills and restarts the binary; every run appends to one log file."""

    def __init__(self, binary, config, work_dir, port):
        self.binary, self.config, self.port = binary, config, port
        self.log_path = os.path.join(work_dir, "switchboard.log")
        self.pid_path = os.path.join(work_dir, "switchboard.pid")
        self.proc = None
        self.starts = 0
        self.kills = 0
        self.unexpected_exits = []  # exit codes of runs that ended without being killed
        self.lock = threading.Lock()

    def start(self):
        self.starts += 1
        with open(self.log_path, "ab") as f:
            f.write(f"\n===== chaos: start #{self.starts} at {time.strftime('%T')} =====\n"
                    .encode())
            f.flush()
            # Own session: a Ctrl-C meant for the driver should not kill it behind our back.
            self.proc = subprocess.Popen([self.binary, "run", "--config", self.config],
                                         stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                         start_new_session=True)
        with open(self.pid_path, "w") as f:
            f.write(str(self.proc.pid))

    def check_alive(self):
        """Restarts the process if it ended on its own; that is a finding, so it is noted."""
        with self.lock:
            if self.proc and self.proc.poll() is not None:
                self.unexpected_exits.append(self.proc.returncode)
                log(f"switchboard exited by itself with {self.proc.returncode}; restarting")
                self.start()

    def kill_and_restart(self):
        with self.lock:
            if self.proc.poll() is not None:
                self.unexpected_exits.append(self.proc.returncode)
            else:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()
                self.kills += 1
            self.start()

    def stop(self, timeout=15):
        """SIGTERM, then SIGKILL if it does not end in time. Returns the exit code."""
        with self.lock:
            if not self.proc or self.proc.poll() is not None:
                return self.proc.returncode if self.proc else None
            self.proc.terminate()
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"switchboard ignored SIGTERM for {timeout} s; SIGKILL")
                self.proc.kill()
                return self.proc.wait()
            finally:
                try:
                    os.unlink(self.pid_path)
                except FileNotFoundError:
                    pass

    def wait_healthy(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return True
            except OSError:
                time.sleep(0.1)
        return False


# ---------------------------------------------------------------------------------------------
# Senders: one lane per ticket, each sending its ticket's webhooks in order


def plan(webhooks, tickets, rate):
    """Per ticket, the (sequence number, due time in s) of each of its webhooks.

    Webhook j of the whole run belongs to ticket j % tickets and is due at j / rate, so the
    tickets take turns and the run as a whole sends at `rate`.
    """
    lanes = collections.defaultdict(list)
    for j in range(webhooks):
        ticket = f"t{j % tickets:0{len(str(tickets - 1))}d}"
        lanes[ticket].append((j // tickets + 1, j / rate))
    return lanes


def payload(ticket, seq):
    # The first webhook of a ticket has an "opened" status; the default rules create the room
    # on it and on every later ("updated") one if it is missing, then post the body.
    return json.dumps({
        "ticket": {"id": ticket, "title": f"chaos {ticket}",
                   "status": "new" if seq == 1 else "open"},
        "message": {"body": f"chaos {ticket} #{seq}"},
    }, separators=(",", ":")).encode()


class Lane(threading.Thread):
    """A webhook sender for one ticket: next message only after the previous one got a 2xx."""

    def __init__(self, ticket, schedule, *, port, secret, run_id, t0, deadline, timeout, rng):
        super().__init__(name=f"lane-{ticket}", daemon=True)
        self.ticket, self.schedule = ticket, schedule
        self.port, self.secret, self.run_id = port, secret, run_id
        self.t0, self.deadline, self.timeout = t0, deadline, timeout
        self.rng = rng
        self.conn = None
        self.accepted = []        # sequence numbers that got a 2xx
        self.answer_times = []    # seconds, the attempt that got the 2xx
        self.accept_delays = []   # seconds from the due time to the 2xx, retries included
        self.duplicate_answers = 0
        self.failures = collections.Counter()  # why attempts failed
        self.given_up = []

    def run(self):
        for seq, due in self.schedule:
            pause = self.t0 + due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            if not self.deliver(seq, self.t0 + due):
                # Past the deadline: the rest of this ticket is not sent either, as a real
                # sender that keeps order would not send them past a stuck one.
                self.given_up += [s for s, _ in self.schedule if s >= seq]
                break
        if self.conn:
            self.conn.close()

    def deliver(self, seq, due_at):
        body = payload(self.ticket, seq)
        headers = {
            "Content-Type": "application/json",
            "X-Signature-256": "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest(),
            # A stable delivery ID: a retry of a webhook that was stored, but whose answer was
            # lost, is recognised as a duplicate rather than stored twice.
            "X-Delivery-Id": f"{self.run_id}-{self.ticket}-{seq}",
        }
        backoff = 0.05
        while time.monotonic() < self.deadline:
            started = time.monotonic()
            outcome = self.attempt(body, headers)
            if isinstance(outcome, dict):
                self.accepted.append(seq)
                self.answer_times.append(time.monotonic() - started)
                self.accept_delays.append(time.monotonic() - due_at)
                self.duplicate_answers += bool(outcome.get("duplicate"))
                return True
            self.failures[outcome] += 1
            # Short, jittered, capped: real senders retry soon, and a restart takes ~1 s.
            time.sleep(backoff * (0.5 + self.rng.random()))
            backoff = min(backoff * 2, 1.0)
        return False

    def attempt(self, body, headers):
        """One POST: the JSON answer on a 2xx, else a short reason for the failure."""
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                       timeout=self.timeout)
            self.conn.request("POST", f"/hooks/{SOURCE_ID}", body, headers)
            resp = self.conn.getresponse()
            data = resp.read()
            if resp.will_close:
                self.reset_connection()
            if 200 <= resp.status < 300:
                try:
                    return json.loads(data)
                except ValueError:
                    return {}
            return f"HTTP {resp.status}"
        except ConnectionRefusedError:
            self.reset_connection()
            return "refused"
        except (socket.timeout, TimeoutError):
            self.reset_connection()
            return "timeout"
        except (OSError, http.client.HTTPException):
            # Reset, closed mid-answer, broken pipe: the process died under the request, or a
            # kept-alive connection belonged to an earlier run.
            self.reset_connection()
            return "reset/closed"

    def reset_connection(self):
        if self.conn:
            self.conn.close()
        self.conn = None


# ---------------------------------------------------------------------------------------------
# Faults


class Killer(threading.Thread):
    """SIGKILLs and restarts Switchboard every `every` s (±25 %) until stopped."""

    def __init__(self, switchboard, every, rng):
        super().__init__(name="killer", daemon=True)
        self.sb, self.every, self.rng = switchboard, every, rng
        self.stopped = threading.Event()

    def run(self):
        # Jitter, so kills land at every point of the work, not in step with the sending.
        while not self.stopped.wait(self.every * self.rng.uniform(0.75, 1.25)):
            self.sb.kill_and_restart()


class HomeserverFault(threading.Thread):
    """Freezes (SIGSTOP) or restarts the homeserver once, `outage` s long, from `at` s on."""

    def __init__(self, synapse, mode, at, outage, t0):
        super().__init__(name="homeserver-fault", daemon=True)
        self.hs, self.mode, self.at, self.outage, self.t0 = synapse, mode, at, outage, t0
        self.began = self.ended = None  # seconds into the run
        self.error = None

    def run(self):
        try:
            time.sleep(max(0.0, self.t0 + self.at - time.monotonic()))
            self.began = time.monotonic() - self.t0
            if self.mode == "stop":
                log(f"homeserver: SIGSTOP for {self.outage:.0f} s")
                self.hs.freeze()
                time.sleep(self.outage)
                self.hs.thaw()
            else:
                log(f"homeserver: stopping it for {self.outage:.0f} s")
                self.hs.stop()
                time.sleep(self.outage)
                # Same port and data dir, no --fresh: users, tokens and rooms are kept.
                self.hs.start(fresh=False)
            self.ended = time.monotonic() - self.t0
            log("homeserver: back")
        except Exception as e:  # reported in the summary; the run goes on
            self.error = repr(e)
            log(f"homeserver fault failed: {e!r}")


# ---------------------------------------------------------------------------------------------
# Reading the rooms back


def read_rooms(base, token):
    """Every room the bot is in: its name and its m.room.message bodies in timeline order."""
    rooms = []
    for room_id in matrix_call(base, "GET", "/_matrix/client/v3/joined_rooms", token)[
            "joined_rooms"]:
        rid = urllib.parse.quote(room_id, safe="")
        try:
            name = matrix_call(base, "GET", f"/_matrix/client/v3/rooms/{rid}/state/m.room.name/",
                               token).get("name", "")
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise
            name = ""
        rooms.append({"room_id": room_id, "name": name, "bodies": room_messages(base, token, rid)})
    return rooms


def room_messages(base, token, rid):
    flt = urllib.parse.quote(json.dumps({"types": ["m.room.message"]}))
    bodies, since = [], None
    while True:
        path = f"/_matrix/client/v3/rooms/{rid}/messages?dir=f&limit=1000&filter={flt}"
        if since:
            path += "&from=" + urllib.parse.quote(since)
        page = matrix_call(base, "GET", path, token)
        bodies += [e.get("content", {}).get("body", "") for e in page.get("chunk", [])]
        # No `end` means the timeline's end was reached.
        if not page.get("chunk") or not page.get("end"):
            return bodies
        since = page["end"]


def room_ticket(name):
    """The ticket a room belongs to, from the name the default rules give it."""
    m = re.fullmatch(r"(?:\[closed\] )?chaos (t\d+)", name)
    return m.group(1) if m else None


def analyse(accepted, rooms):
    """Compares what was accepted with what the rooms hold. `accepted`: ticket -> [seq]."""
    accepted_set = {(t, s) for t, seqs in accepted.items() for s in seqs}
    rooms_of = collections.defaultdict(list)
    seen = collections.Counter()
    f = collections.Counter()
    examples = collections.defaultdict(list)

    def note(kind, what):
        f[kind] += 1
        if len(examples[kind]) < 10:
            examples[kind].append(what)

    for room in rooms:
        ticket = room_ticket(room["name"])
        rooms_of[ticket].append(room["room_id"])
        if ticket is None:
            note("rooms_not_ours", f"{room['room_id']} named {room['name']!r}")
        highest, first_seen = 0, set()
        for body in room["bodies"]:
            m = BODY_RE.match(body)
            if not m:
                f["other_messages"] += 1
                continue
            t, s = m.group(1), int(m.group(2))
            f["messages_read"] += 1
            seen[(t, s)] += 1
            if ticket is not None and t != ticket:
                note("misrouted", f"{body!r} in the room of {ticket}")
            if (t, s) not in accepted_set:
                note("posted_not_accepted", body)
            # Order is judged on first copies only: a late repeat is counted as a duplicate.
            if (t, s) in first_seen:
                continue
            first_seen.add((t, s))
            if t == ticket:
                if s < highest:
                    note("out_of_order", f"{body!r} after #{highest} in {room['room_id']}")
                highest = max(highest, s)

    for key in sorted(accepted_set):
        if seen[key] == 0:
            note("lost", f"chaos {key[0]} #{key[1]}")
    for key, n in sorted(seen.items()):
        if n > 1:
            note("duplicated", f"chaos {key[0]} #{key[1]} seen {n} times")
            f["duplicate_copies"] += n - 1
    for ticket, ids in sorted(rooms_of.items(), key=lambda kv: str(kv[0])):
        if ticket is not None and len(ids) > 1:
            note("tickets_with_extra_rooms", f"{ticket}: {', '.join(ids)}")
            f["extra_rooms"] += len(ids) - 1
    f["rooms"] = len(rooms)
    f["tickets_with_room"] = sum(1 for t in rooms_of if t is not None)
    return f, examples


# ---------------------------------------------------------------------------------------------
# Summary


def percentile(values, p):
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def seconds(v):
    if v is None:
        return "-"
    return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"


def summary(rep):
    a, f, db = rep["args"], rep["findings"], rep.get("database", {})
    hs = rep["homeserver_fault"]
    out = [f"## Chaos run: {a['webhooks']} webhooks over {a['tickets']} tickets at "
           f"{a['rate']:g}/s, {rep['database_kind']}, "
           f"kill every {a['kill_every']:g} s, homeserver {a['homeserver']}"]

    def row(label, value, note=""):
        out.append(f"{label:<32} {value:>12}" + (f"   {note}" if note else ""))

    row("webhooks accepted", f"{rep['accepted']}/{a['webhooks']}",
        f"{rep['duplicate_answers']} answered as duplicates; {rep['given_up']} given up")
    fails = ", ".join(f"{k} {v}" for k, v in sorted(rep["failures"].items())) or "none"
    row("sender retries", rep["retries"], f"({fails})")
    row("answer time p50", seconds(rep["answer_p50"]), "the attempt that got the 2xx")
    row("answer time p99", seconds(rep["answer_p99"]))
    row("answer time max", seconds(rep["answer_max"]))
    row("time to accept p99", seconds(rep["accept_p99"]), "from due time, retries included")
    row("time to accept max", seconds(rep["accept_max"]))
    row("sending took", seconds(rep["send_seconds"]),
        f"planned {seconds(a['webhooks'] / a['rate'])}")
    row("switchboard kills", rep["kills"],
        f"{rep['starts']} starts; exited by itself: {len(rep['unexpected_exits'])}")
    if a["homeserver"] != "none":
        span = (f"{hs['began']:.1f} s to {hs['ended']:.1f} s into the run"
                if hs.get("ended") is not None else f"did not complete: {hs.get('error')}")
        row(f"homeserver {a['homeserver']}", f"{a['outage']:g} s", span)
    row("drained after sending", seconds(rep["drain_seconds"]) if rep["drained"] else "NO",
        "" if rep["drained"] else f"backlog left: {rep['backlog']}")
    row("rooms", f["rooms"], f"for {f['tickets_with_room']} tickets")
    row("messages read back", f["messages_read"], f"other messages: {f['other_messages']}")
    if db:
        row("inbox deliveries", db["inbox_rows"])
        row("outbox actions", sum(db["outbox"].values()),
            ", ".join(f"{k} {v}" for k, v in sorted(db["outbox"].items())) +
            f"; attempts {db['attempts']}, max {db['max_attempts']} for one")
        row("links", db["links"])
    out.append("-" * 60)
    row("LOST", f["lost"], "accepted, no message")
    row("DUPLICATED", f["duplicated"], f"texts seen more than once ({f['duplicate_copies']} "
        "extra copies)")
    row("OUT OF ORDER", f["out_of_order"], "a message after a later one of its ticket")
    row("EXTRA ROOMS", f["extra_rooms"],
        f"{f['tickets_with_extra_rooms']} tickets with more than one room")
    row("misrouted", f["misrouted"], "a ticket's message in another ticket's room")
    row("posted, not accepted", f["posted_not_accepted"])
    row("failed actions", db.get("outbox", {}).get("failed", 0) if db else "-",
        "; ".join(db.get("failed_errors", []))[:200] if db else "")
    row("result", rep["result"])
    for kind, items in rep["examples"].items():
        out.append(f"{kind}, first {len(items)}:")
        out += [f"    {x}" for x in items]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# The run


class Run:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.synapse = None
        self.switchboard = None
        self.pg_admin_url = self.pg_db = None
        self.killer = self.fault = None

    def setup(self):
        a = self.args
        self.work = os.path.abspath(a.work_dir or tempfile.mkdtemp(prefix="switchboard-chaos."))
        self.owned = a.owned_work_dir or not a.work_dir
        os.makedirs(self.work, exist_ok=True)
        log(f"work dir {self.work}")
        if not os.access(a.switchboard_bin, os.X_OK):
            raise SystemExit(f"chaos: no switchboard binary at {a.switchboard_bin} "
                             "(set SWITCHBOARD_BIN, or run scripts/chaos.sh, which builds it)")

        self.synapse = Synapse(os.path.join(self.work, "synapse"), free_port())
        bot_password = secrets.token_hex(12)
        log(f"starting Synapse on {self.synapse.base}")
        self.synapse.start(fresh=True, register=[f"{BOT_LOCALPART}:{bot_password}"])
        # The driver's own session of the bot, to read the rooms back: another device, so it
        # does not touch the session Switchboard keeps.
        self.reader_token = login(self.synapse.base, BOT_LOCALPART, bot_password, "CHAOSREADER")

        data_dir = os.path.join(self.work, "data")
        if a.postgres:
            self.pg_db = "chaos_" + secrets.token_hex(4)
            self.pg_admin_url = a.postgres
            # Marker files, so chaos.sh can drop the database should this process die.
            with open(os.path.join(self.work, "pg_database"), "w") as f:
                f.write(f"{self.pg_admin_url}\n{self.pg_db}\n")
            psql(self.pg_admin_url, f'CREATE DATABASE "{self.pg_db}"')
            db_url = with_database(a.postgres, self.pg_db)
            self.store = Store(pg_url=db_url)
            log(f"PostgreSQL database {self.pg_db}")
        else:
            db_path = os.path.join(data_dir, "switchboard.db")
            db_url = "sqlite://" + db_path
            self.store = Store(sqlite_path=db_path)

        self.secret = secrets.token_hex(16).encode()
        port = free_port()
        config = os.path.join(self.work, "switchboard.toml")
        write_config(config, data_dir=data_dir, port=port, homeserver=self.synapse.base,
                     bot_password=bot_password, webhook_secret=self.secret.decode(),
                     db_url=db_url)
        self.switchboard = Switchboard(a.switchboard_bin, config, self.work, port)
        self.switchboard.start()
        if not self.switchboard.wait_healthy():
            raise RuntimeError(f"switchboard did not answer /health; see "
                               f"{self.switchboard.log_path}")
        log(f"switchboard listening on 127.0.0.1:{port}")

    def send(self):
        """Runs the senders and the faults; returns when every lane is done."""
        a = self.args
        lanes_plan = plan(a.webhooks, a.tickets, a.rate)
        planned = a.webhooks / a.rate
        threading.stack_size(512 * 1024)  # many lanes, little stack each
        self.t0 = time.monotonic() + 0.5
        deadline = self.t0 + planned + a.send_grace
        run_id = secrets.token_hex(4)
        self.lanes = [Lane(t, s, port=self.switchboard.port, secret=self.secret, run_id=run_id,
                           t0=self.t0, deadline=deadline, timeout=a.request_timeout,
                           rng=random.Random(self.rng.random()))
                      for t, s in sorted(lanes_plan.items())]
        self.killer = Killer(self.switchboard, a.kill_every, random.Random(self.rng.random()))
        self.fault = None
        if a.homeserver != "none":
            self.fault = HomeserverFault(self.synapse, a.homeserver, 0.2 * planned, a.outage,
                                         self.t0)
        log(f"sending {a.webhooks} webhooks over {a.tickets} tickets at {a.rate:g}/s "
            f"(~{planned:.0f} s)")
        for t in self.lanes:
            t.start()
        if a.kill_every > 0:
            self.killer.start()
        if self.fault:
            self.fault.start()
        next_report = time.monotonic() + 10
        while any(t.is_alive() for t in self.lanes):
            time.sleep(0.2)
            if time.monotonic() >= next_report:
                next_report += 10
                done = sum(len(t.accepted) for t in self.lanes)
                retries = sum(sum(t.failures.values()) for t in self.lanes)
                log(f"{time.monotonic() - self.t0:5.0f} s: accepted {done}/{a.webhooks}, "
                    f"retries {retries}, kills {self.switchboard.kills}")
        self.send_seconds = time.monotonic() - self.t0
        self.killer.stopped.set()
        if self.killer.is_alive():
            self.killer.join()
        log(f"sending done after {self.send_seconds:.1f} s; no more kills")

    def drain(self):
        """Waits for the fault to end and the backlog to be worked off, Switchboard running."""
        if self.fault and self.fault.is_alive():
            log("waiting for the homeserver to come back")
            self.fault.join()
        started = time.monotonic()
        deadline = started + self.args.drain_timeout
        backlog = None
        while time.monotonic() < deadline:
            self.switchboard.check_alive()
            backlog = self.store.backlog()
            if backlog == (0, 0):
                self.drain_seconds = time.monotonic() - started
                log(f"drained after {self.drain_seconds:.1f} s")
                return True, backlog
            time.sleep(0.5)
        log(f"not drained after {self.args.drain_timeout:.0f} s: (unprocessed inbox, pending "
            f"outbox) = {backlog}")
        self.drain_seconds = None
        return False, backlog

    def report(self, drained, backlog):
        a = self.args
        sb_exit = self.switchboard.stop()
        accepted = {t.ticket: t.accepted for t in self.lanes}
        rooms = read_rooms(self.synapse.base, self.reader_token)
        findings, examples = analyse(accepted, rooms)
        answer = [x for t in self.lanes for x in t.answer_times]
        delays = [x for t in self.lanes for x in t.accept_delays]
        failures = sum((t.failures for t in self.lanes), collections.Counter())
        try:
            db = self.store.bookkeeping()
        except (sqlite3.Error, subprocess.CalledProcessError) as e:
            db = {}
            log(f"could not read the database's bookkeeping: {e}")
        bad = any(findings[k] for k in ("lost", "duplicated", "out_of_order", "extra_rooms"))
        incomplete = (not drained or sum(len(t.given_up) for t in self.lanes) > 0
                      or (self.fault and self.fault.ended is None))
        rep = {
            "args": vars(a), "database_kind": "PostgreSQL" if a.postgres else "SQLite",
            "accepted": len(answer), "duplicate_answers": sum(t.duplicate_answers for t in self.lanes),
            "given_up": sum(len(t.given_up) for t in self.lanes),
            "retries": sum(failures.values()), "failures": dict(failures),
            "answer_p50": percentile(answer, 50), "answer_p99": percentile(answer, 99),
            "answer_max": max(answer, default=None),
            "accept_p99": percentile(delays, 99), "accept_max": max(delays, default=None),
            "send_seconds": self.send_seconds,
            "kills": self.switchboard.kills, "starts": self.switchboard.starts,
            "unexpected_exits": self.switchboard.unexpected_exits,
            "final_exit_code": sb_exit,
            "homeserver_fault": {"began": self.fault.began, "ended": self.fault.ended,
                                 "error": self.fault.error} if self.fault else {},
            "drained": drained, "drain_seconds": self.drain_seconds, "backlog": backlog,
            "findings": dict(findings), "examples": dict(examples), "database": db,
            "result": "FAIL" if bad else ("INCOMPLETE" if incomplete else "PASS"),
        }
        for k in ("lost", "duplicated", "duplicate_copies", "out_of_order", "extra_rooms",
                  "tickets_with_extra_rooms", "misrouted", "posted_not_accepted",
                  "messages_read", "other_messages", "rooms", "tickets_with_room"):
            rep["findings"].setdefault(k, 0)
        with open(os.path.join(self.work, "report.json"), "w") as f:
            json.dump(rep, f, indent=2)
        print(summary(rep), flush=True)
        return 1 if bad else (2 if incomplete else 0)

    def cleanup(self):
        """Stops everything this run started; each step works whatever state the run is in."""
        if self.killer:
            self.killer.stopped.set()
            if self.killer.is_alive():
                self.killer.join(10)
        if self.switchboard:
            self.switchboard.stop()
        if self.synapse:
            self.synapse.stop()
        keep = self.args.keep
        if self.pg_db and not keep:
            try:
                psql(self.pg_admin_url, f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')
                os.unlink(os.path.join(self.work, "pg_database"))
            except (subprocess.CalledProcessError, OSError) as e:
                log(f"could not drop database {self.pg_db}: {e}")
        if keep:
            log(f"kept {self.work}" + (f" and database {self.pg_db}" if self.pg_db else ""))
        elif self.owned and getattr(self, "work", None):
            shutil.rmtree(self.work, ignore_errors=True)


def main(argv):
    args = parse_args(argv)
    # SIGTERM (and SIGHUP) end the run like Ctrl-C does, through the cleanup below.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))
    run = Run(args)
    try:
        run.setup()
        run.send()
        drained, backlog = run.drain()
        return run.report(drained, backlog)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except Exception as e:  # a failed setup or read-back is no finding about Switchboard
        log(f"the run could not be completed: {e!r}")
        return 2
    finally:
        run.cleanup()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
