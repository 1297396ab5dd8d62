"""Chaos: N messages through nginx while everything that can fail does, then
a count of what became of each accepted message.

The stack: Redis, PostgreSQL + FerretDB, nginx with two workers, two
deliveryd instances (route: the SendGrid stand-in, then the Maildir SMTP
server). Senders post messages with an Idempotency-Key each and retry a
message with the same key until it is accepted (as a client should). While
they send and while deliveryd drains:
  - every KILL_EVERY seconds one deliveryd is killed -9 (the two in turn)
    and started again a second later;
  - Redis is restarted with SIGTERM, and later killed -9 and restarted;
  - the store stalls (FerretDB stopped 5 s), and later PostgreSQL is killed
    -9 and restarted;
  - the first provider answers 500s, times out and resets connections, in
    turn, for a few seconds at a time.
Then: every accepted message must have exactly one terminal record and be
delivered (to one of the two providers) once. Printed: accepted, lost (no
terminal record, or recorded sent but delivered nowhere: must be 0), failed,
duplicates (delivered more than once: the documented crash window between a
provider taking a message and the SENT marker reaching Redis), and the faults.

usage: bench/chaos.py [N, default 100000]
       CHAOS_KILL_EVERY=seconds (4), CHAOS_SENDERS=threads (8)
"""
import concurrent.futures
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "t"))
import pymongo  # noqa: E402
import redis  # noqa: E402

import stack as stackmod  # noqa: E402


def say(msg):
    print(f"==> {msg}", flush=True)


class Chaos:
    def __init__(self, n, kill_every=4.0, senders=8, directory=None, deliveryd=None):
        self.n, self.kill_every, self.senders = n, kill_every, senders
        self.dir = directory or tempfile.mkdtemp(prefix="chaos-")
        self.s = stackmod.Stack(self.dir)
        self.key = self.s.add_key("chaos", "chaos", "send+read")
        self.token = self.key.token(ttl=86400)
        self.conf = dict(claim_idle="5", send_timeout="3", retry_base="1", retry_max_delay="5",
                         max_attempts="50", max_age="3600", breaker_cooldown="2", shutdown_grace="1",
                         connections_per_host="16", **(deliveryd or {}))
        self.accepted = []
        self.answers = {}
        self.faults = []
        self.sent = 0
        self.stop_chaos = threading.Event()
        self.lock = threading.Lock()

    # -- the stack --------------------------------------------------------

    def start(self):
        s = self.s
        say(f"starting redis, PostgreSQL + FerretDB, the Maildir SMTP server, the provider stand-in, "
            f"nginx (2 workers) and two deliveryd in {self.dir}")
        s.start_redis()
        s.start_ferretdb()
        s.start_smtp()
        s.start_standin()
        s.start_nginx(workers=2, log_level="warn")
        self.lines = [f"provider sg sendgrid url=http://127.0.0.1:{s.standin.port} "
                      f"api_key={s.standin_keys['sendgrid']}",
                      f"provider mx smtp url=smtp://127.0.0.1:{s.smtp.port}/mailapi.test",
                      "route * sg, mx"]
        self.dd = {name: self.start_deliveryd(name) for name in ("deliveryd-a", "deliveryd-b")}
        self.base = f"http://127.0.0.1:{s.nginx.port}"

    def start_deliveryd(self, name):
        return self.s.start_deliveryd(name=name, lines=self.lines, **self.conf)

    def fault(self, what):
        with self.lock:
            self.faults.append((round(time.time() - self.t0, 1), what))
        say(f"fault at {time.time() - self.t0:5.1f} s: {what}")

    # -- senders ----------------------------------------------------------

    def send_one(self, i):
        body = json.dumps({"from": "chaos@example.com", "to": [f"c{i}@example.org"], "subject": f"chaos {i}",
                           "text": "x" * 200}).encode()
        headers = {"Content-Type": "application/json", "Authorization": "Bearer " + self.token,
                   "Idempotency-Key": uuid.uuid4().hex}
        for attempt in range(600):
            req = urllib.request.Request(self.base + "/v1/messages", data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    mid = json.loads(r.read())["id"]
                    code = r.status
            except urllib.error.HTTPError as e:
                code, mid = e.code, None
            except OSError:
                code, mid = "no answer", None
            with self.lock:
                self.answers[code] = self.answers.get(code, 0) + 1
            if code == 202:
                with self.lock:
                    self.accepted.append(mid)
                return
            time.sleep(0.2)  # 503 while Redis is away: the same key again
        raise SystemExit(f"chaos: message {i} was never accepted")

    def send_all(self):
        done = [0]

        def work(k):
            for i in range(k, self.n, self.senders):
                self.send_one(i)
                with self.lock:
                    done[0] += 1
        with concurrent.futures.ThreadPoolExecutor(self.senders) as pool:
            futures = [pool.submit(work, k) for k in range(self.senders)]
            last = 0
            while not all(f.done() for f in futures):
                if time.time() - last >= 5:
                    print(f"    accepted {len(self.accepted):,}/{self.n:,}", flush=True)
                    last = time.time()
                time.sleep(0.2)
            for f in futures:
                f.result()

    # -- faults -----------------------------------------------------------

    def restart_redis(self, sig):
        port = self.s.redis.port
        self.s.redis.stop(sig)
        self.s.procs.remove(self.s.redis)
        time.sleep(1)
        self.s.start_redis(port=port)

    def chaos_loop(self):
        s = self.s
        plan = [(0.25, "Redis restarted (SIGTERM)", lambda: self.restart_redis(signal.SIGTERM)),
                (0.45, "Redis killed -9 and restarted", lambda: self.restart_redis(signal.SIGKILL)),
                (0.6, "store stalled 5 s (FerretDB stopped)", self.stall_store),
                (0.8, "PostgreSQL killed -9, restarted after 3 s", self.kill_postgres)]
        modes = [{"status": 500, "count": -1}, {"mode": "timeout", "count": -1}, {"mode": "reset", "count": -1},
                 {"mode": "ok"}]
        control = f"http://127.0.0.1:{s.standin.port}/_control/sendgrid"
        next_kill, victim, next_mode, mode = self.kill_every, 0, 3.0, 0
        while not self.stop_chaos.is_set():
            now = time.time() - self.t0
            # the big faults at points of the sending (all of them, sending over or not)
            if plan and (len(self.accepted) >= plan[0][0] * self.n or self.sending_over):
                _, what, act = plan.pop(0)
                self.fault(what)
                act()
            if now >= next_kill:
                name = ("deliveryd-a", "deliveryd-b")[victim % 2]
                victim += 1
                self.fault(f"{name} killed -9")
                proc = self.dd[name]
                proc.stop(signal.SIGKILL)
                s.procs.remove(proc)
                time.sleep(1)
                self.dd[name] = self.start_deliveryd(name)
                next_kill = time.time() - self.t0 + self.kill_every
            if now >= next_mode:
                cmd = modes[mode % len(modes)]
                mode += 1
                self.fault("provider sg: " + (cmd.get("mode") if "mode" in cmd else f"answers {cmd['status']}"))
                req = urllib.request.Request(control, data=json.dumps(cmd).encode(), method="POST",
                                             headers={"Content-Type": "application/json"})
                urllib.request.urlopen(req, timeout=5).read()
                next_mode = now + 3.0
            time.sleep(0.1)
        urllib.request.urlopen(urllib.request.Request(control, data=b'{"mode": "ok"}', method="POST"),
                               timeout=5).read()

    def stall_store(self):
        os.kill(self.s.mongo.popen.pid, signal.SIGSTOP)
        time.sleep(5)
        os.kill(self.s.mongo.popen.pid, signal.SIGCONT)

    def kill_postgres(self):
        port = self.s.pg.port
        self.s.pg.stop(signal.SIGKILL)
        self.s.procs.remove(self.s.pg)
        time.sleep(3)
        self.s.start_postgres(port=port)

    # -- the count ----------------------------------------------------------

    def drain(self, timeout):
        r = redis.Redis(port=self.s.redis.port)
        deadline = time.time() + timeout
        last = 0
        while time.time() < deadline:
            try:
                left = r.xlen("mailapi:messages") + r.zcard("mailapi:scheduled")
            except redis.RedisError:
                left = -1
            if left == 0:
                return True
            if time.time() - last >= 5:
                print(f"    left in Redis: {left:,}", flush=True)
                last = time.time()
            time.sleep(0.5)
        return False

    def count(self):
        coll = pymongo.MongoClient(self.s.mongodb_uri)["mailapi"]["messages"]
        terminal = {}
        for d in coll.find({}, {"m": 1, "eid": 1, "type": 1, "events.eid": 1, "events.type": 1}):
            events = d.get("events") or ([{"eid": d["eid"], "type": d["type"]}] if "eid" in d else [])
            for e in events:
                if e["eid"].startswith("t") and e["type"] in ("sent", "failed"):
                    terminal.setdefault(d["m"], []).append(e["type"])
        smtp = Mailbox(self.s.maildir).counts()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.s.standin.port}/_ids/sendgrid", timeout=30) as r:
            api = json.loads(r.read())
        out = {"accepted": len(self.accepted), "lost": [], "failed": [], "duplicates": [], "repeated_terminal": []}
        for mid in self.accepted:
            t = terminal.get(mid, [])
            delivered = smtp.get(mid, 0) + api.get(mid, 0)
            if len(t) > 1:
                out["repeated_terminal"].append(mid)
            if not t or (t[-1] == "sent" and delivered == 0):
                out["lost"].append(mid)
            elif t[-1] == "failed":
                out["failed"].append(mid)
            if delivered > 1:
                out["duplicates"].append(mid)
        return out

    def run(self, drain_timeout=900):
        self.start()
        self.t0 = time.time()
        self.sending_over = False
        chaos = threading.Thread(target=self.chaos_loop, daemon=True)
        chaos.start()
        say(f"sending {self.n:,} messages with {self.senders} senders, faults all along")
        self.send_all()
        self.sending_over = True
        say(f"{len(self.accepted):,} accepted in {time.time() - self.t0:.0f} s; draining (the faults go on "
            f"while Redis holds work, at most {self.kill_every * 3:.0f} s more)")
        deadline = time.time() + self.kill_every * 3
        while time.time() < deadline and self.drain(1) is False:
            pass
        self.stop_chaos.set()
        chaos.join()
        for name in list(self.dd):
            if not self.dd[name].alive():
                self.dd[name] = self.start_deliveryd(name)
        if not self.drain(drain_timeout):
            say("Redis still holds work after the drain timeout")
        time.sleep(2)
        return self.count()


class Mailbox:
    def __init__(self, path):
        self.path = path

    def counts(self):
        import mailbox
        seen = {}
        for m in mailbox.Maildir(self.path, create=False):
            mid = (m["Message-ID"] or "").strip("<>").split("@")[0]
            seen[mid] = seen.get(mid, 0) + 1
        return seen


def report(c, result):
    n = result["accepted"]
    pct = lambda k: 100.0 * len(result[k]) / n if n else 0  # noqa: E731
    print()
    print("| accepted | lost | failed | duplicates | duplicate % | repeated terminal records |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {n:,} | {len(result['lost'])} | {len(result['failed'])} | {len(result['duplicates'])} | "
          f"{pct('duplicates'):.3f} | {len(result['repeated_terminal'])} |")
    print()
    print("answers to senders: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(c.answers.items(), key=str)))
    print(f"faults ({len(c.faults)}): " + "; ".join(f"{t} s {w}" for t, w in c.faults))
    if result["lost"]:
        print("lost (first 10): " + ", ".join(result["lost"][:10]))
    if result["duplicates"]:
        print("duplicates (first 10): " + ", ".join(result["duplicates"][:10]))


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
    c = Chaos(n, float(os.environ.get("CHAOS_KILL_EVERY", "4")), int(os.environ.get("CHAOS_SENDERS", "8")))
    try:
        result = c.run()
    except BaseException:
        c.s.stop_all()
        print(f"chaos: failed; the stack directory {c.dir} is kept", file=sys.stderr)
        raise
    c.s.stop_all()
    report(c, result)
    if result["lost"] or result["repeated_terminal"]:
        print(f"chaos: messages were lost or recorded twice; the stack directory {c.dir} is kept")
        sys.exit(1)
    shutil.rmtree(c.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
