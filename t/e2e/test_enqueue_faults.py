"""The loop turn's transaction under the faults operations meet: Redis paused
(SIGSTOP) with transactions sent and unanswered, restarted, its scripts
flushed, nginx reloaded mid-traffic with two workers, 10 MiB messages among
small ones. Whatever happens, every 202 is exactly one entry and one hash;
a 503 is nothing written except where Redis may still run what was sent
(a timeout before it answered)."""
import base64
import concurrent.futures
import os
import signal
import threading
import time

import redis as redislib
import requests

import stack as stackmod
from conftest import message


def own_stack(path, **nginx):
    s = stackmod.Stack(str(path))
    keys = {
        "plain": s.add_key("plain", "acme", "send+read"),
        "rated": s.add_key("rated", "acme", "send+read", "rate=100000/s burst=100000"),
    }
    s.start_redis()
    s.start_ferretdb()
    s.start_nginx(**nginx)
    return s, {k: v.token(ttl=3600) for k, v in keys.items()}, f"http://127.0.0.1:{s.nginx.port}"


class Traffic:
    """Threads sending all the time, alternating keys; every answer kept
    with when it came."""

    def __init__(self, base, tokens, names, threads=8, body=None, timeout=20, close=False):
        self.base, self.tokens, self.names, self.close = base, tokens, names, close
        self.body = body or (lambda i, n: message(f"t{i}-{n}@example.org"))
        self.answers = []  # (time, thread, status, id or error code)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.timeout = timeout
        self.pool = concurrent.futures.ThreadPoolExecutor(threads)
        self.futures = [self.pool.submit(self.run, i) for i in range(threads)]

    def run(self, i):
        http = requests.Session()
        http.trust_env = False
        n = 0
        while not self.stop.is_set():
            name = self.names[(i + n) % len(self.names)]
            try:
                r = http.post(self.base + "/v1/messages", json=self.body(i, n), timeout=self.timeout,
                              headers=dict({"Authorization": "Bearer " + self.tokens[name]},
                                           **({"Connection": "close"} if self.close else {})))
                got = (r.status_code, r.json()["id"] if r.status_code == 202 else r.json()["error"]["code"])
            except requests.RequestException as e:
                got = (0, type(e).__name__)
            with self.lock:
                self.answers.append((time.time(), i, *got))
            n += 1

    def finish(self):
        self.stop.set()
        for f in self.futures:
            f.result()
        self.pool.shutdown()
        return self.answers

    def accepted(self):
        return [a[3] for a in self.answers if a[2] == 202]

    def wait_accepted(self, n, timeout=20):
        deadline = time.time() + timeout
        while len(self.accepted()) < n:
            assert time.time() < deadline, self.summary()
            time.sleep(0.02)

    def summary(self):
        out = {}
        for a in self.answers:
            out[(a[2], a[3] if a[2] != 202 else "")] = out.get((a[2], a[3] if a[2] != 202 else ""), 0) + 1
        return out


def entries(r):
    return [f[b"id"].decode() for _, f in r.xrange("mailapi:messages")]


def hashes(r):
    return {k.decode().rsplit(":", 1)[1] for k in r.scan_iter("mailapi:messages:msg_*", count=1000)}


def assert_each_accepted_once(r, accepted):
    got = entries(r)
    assert len(got) == len(set(got)), "an id with two entries"
    missing = set(accepted) - set(got)
    assert not missing, f"{len(missing)} accepted messages have no entry"
    assert set(accepted) <= hashes(r)
    assert len(accepted) == len(set(accepted))
    return got


def assert_workers_alive(s):
    log = open(os.path.join(s.dir, "nginx-error.log"), errors="replace").read()
    assert "exited on signal" not in log and "[alert]" not in log, log[-3000:]
    return log


def test_redis_paused_with_transactions_unanswered_then_resumed(tmp_path):
    """SIGSTOP while sends of both paths are in flight: they time out (503)
    and the worker reconnects; after SIGCONT Redis may still run what it had
    been sent (those 503s are written: a timeout cannot know), but every 202
    is one entry, nothing is written twice, and sends work again at once."""
    s, tokens, base = own_stack(tmp_path, redis_timeout="1s")
    try:
        r = redislib.Redis(port=s.redis.port)
        t = Traffic(base, tokens, ["plain", "rated"])
        try:
            t.wait_accepted(200)
            os.kill(s.redis.popen.pid, signal.SIGSTOP)
            try:
                time.sleep(3.5)
            finally:
                os.kill(s.redis.popen.pid, signal.SIGCONT)
            resumed = time.time()
            n = len(t.accepted())
            t.wait_accepted(n + 200)
            time.sleep(max(0.0, resumed + 2.0 - time.time()))
        finally:
            answers = t.finish()
        assert {a[2] for a in answers} <= {202, 503}, t.summary()
        paused = [a for a in answers if a[2] == 503]
        assert paused and all(a[3] == "queue_unavailable" for a in paused)
        # back to work at once: nothing but 202s a second after SIGCONT
        late = [a for a in answers if a[0] > resumed + 1.0]
        assert late and {a[2] for a in late} == {202}, t.summary()
        time.sleep(0.5)
        got = assert_each_accepted_once(r, t.accepted())
        # what Redis ran after the 503 it could not answer in time: at most
        # one per 503 (none of the 202s)
        assert len(got) - len(t.accepted()) <= len(paused)
        # every entry has its hash, every hash its entry: no half message
        assert set(got) == hashes(r)
        assert_workers_alive(s)
    finally:
        s.stop_all()


def test_redis_restarted_mid_traffic(tmp_path):
    """Redis stopped (SIGTERM) and started again on its port while sends
    run: 503s while it is away, every 202 one entry, and sends recover."""
    s, tokens, base = own_stack(tmp_path)
    try:
        t = Traffic(base, tokens, ["plain", "rated"])
        try:
            t.wait_accepted(200)
            port = s.redis.port
            s.redis.stop(signal.SIGTERM)
            time.sleep(1)
            s.start_redis(port=port)
            back = time.time()
            n = len(t.accepted())
            t.wait_accepted(n + 200)
        finally:
            answers = t.finish()
        assert {a[2] for a in answers} <= {202, 503}, t.summary()
        # the worker reconnects within its backoff (at most 5 s)
        late = [a for a in answers if a[0] > back + 6]
        assert all(a[2] == 202 for a in late), t.summary()
        r = redislib.Redis(port=s.redis.port)
        got = assert_each_accepted_once(r, t.accepted())
        assert set(got) == hashes(r)
        assert_workers_alive(s)
    finally:
        s.stop_all()


def test_script_flush_fails_sends_only_transiently_and_writes_nothing(tmp_path):
    """SCRIPT FLUSH while rate-limited sends run: the EVALSHAs of the
    transactions under way hear NOSCRIPT (503, nothing written), the
    script is loaded again and the next sends are accepted."""
    s, tokens, base = own_stack(tmp_path)
    try:
        r = redislib.Redis(port=s.redis.port)
        t = Traffic(base, tokens, ["rated", "rated", "plain"])
        flushes = []
        try:
            t.wait_accepted(100)
            for _ in range(5):
                flushes.append(time.time())  # before: a NOSCRIPT may be answered before script_flush returns
                r.script_flush()
                n = len(t.accepted())
                t.wait_accepted(n + 100, timeout=5)
        finally:
            answers = t.finish()
        assert {a[2] for a in answers} <= {202, 503}, t.summary()
        failed = [a for a in answers if a[2] == 503]
        # transient: only right after a flush
        for a in failed:
            assert any(0 <= a[0] - f < 1.0 for f in flushes), (a, flushes)
        got = assert_each_accepted_once(r, t.accepted())
        assert sorted(got) == sorted(t.accepted())  # a NOSCRIPT wrote nothing
        assert set(got) == hashes(r)
        assert_workers_alive(s)
    finally:
        s.stop_all()


def test_reload_mid_traffic_with_two_workers(tmp_path):
    """SIGHUP three times while sends run on two workers: old workers finish
    their transactions, new ones connect; every 202 is one entry. (A new
    connection a request: an old worker closes its idle keep-alive
    connections, and a request sent on one as it closes is lost to HTTP, not
    to this module.)"""
    s, tokens, base = own_stack(tmp_path, workers=2)
    try:
        r = redislib.Redis(port=s.redis.port)
        t = Traffic(base, tokens, ["plain", "rated"], close=True)
        try:
            t.wait_accepted(200)
            for _ in range(3):
                s.nginx.send_signal(signal.SIGHUP)
                n = len(t.accepted())
                t.wait_accepted(n + 200)
        finally:
            answers = t.finish()
        assert {a[2] for a in answers} <= {202, 503}, t.summary()
        got = assert_each_accepted_once(r, t.accepted())
        assert sorted(got) == sorted(t.accepted())  # a 503 here wrote nothing
        assert_workers_alive(s)
    finally:
        s.stop_all()


def test_large_messages_among_small_ones(tmp_path):
    """Near 10 MiB sends in the same turns as small ones: each large one goes
    in a transaction of its own (the 1 MiB cap), everything is accepted and
    written once, and the worker does not keep the large messages' room."""
    s, tokens, base = own_stack(tmp_path, redis_timeout="10s")
    try:
        r = redislib.Redis(port=s.redis.port)
        att = base64.b64encode(os.urandom(3_600_000)).decode()
        big = [{"filename": f"f{i}.bin", "content": att} for i in range(2)]

        def body(i, n):
            if i == 0:
                return message(f"b{i}-{n}@example.org", attachments=big)
            return message(f"b{i}-{n}@example.org")
        assert send(base, tokens["plain"], body(1, 0)).status_code == 202
        fresh_rss = worker_rss_kb(s)
        for i in range(3):
            assert send(base, tokens["plain"], body(0, i)).status_code == 202
        base_rss = worker_rss_kb(s)
        if not stackmod.SANITIZE:
            # no room of a ~10 MiB message is kept (the transaction's buffer
            # or hiredis's): less than one message's worth stays
            assert base_rss - fresh_rss < 6 * 1024, (fresh_rss, base_rss)
        t = Traffic(base, tokens, ["plain", "rated"], threads=6, body=body, timeout=60)
        try:
            deadline = time.time() + 90
            while sum(1 for a in t.answers if a[1] == 0 and a[2] == 202) < 8:
                assert time.time() < deadline, t.summary()
                time.sleep(0.1)
        finally:
            answers = t.finish()
        assert {a[2] for a in answers} == {202}, t.summary()
        got = assert_each_accepted_once(r, t.accepted())
        assert len(got) == len(t.accepted()) + 4
        stats = r.info("commandstats")
        assert stats["cmdstat_exec"]["calls"] < len(got)
        if not stackmod.SANITIZE:
            grown = worker_rss_kb(s) - base_rss
            assert grown < 40 * 1024, f"the worker grew by {grown} KiB"
        assert_workers_alive(s)
    finally:
        s.stop_all()


def send(base, token, body):
    return requests.post(base + "/v1/messages", json=body, timeout=60, headers={"Authorization": "Bearer " + token})


def worker_rss_kb(s):
    total = 0
    for pid in os.popen(f"pgrep -P {s.nginx.popen.pid}").read().split():
        total += int([line.split()[1] for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS")][0])
    return total


def test_one_idempotency_key_sent_many_times_at_once_is_one_message(tmp_path):
    """The same Idempotency-Key 48 times at once, so that several land in
    one transaction: the script runs them one after another inside EXEC,
    the first writes, the others are replays of its id (or conflicts, for
    another payload); one entry a key. Rounds until one of them shared a
    transaction (on a busy machine the sends may not meet)."""
    s, tokens, base = own_stack(tmp_path)
    try:
        r = redislib.Redis(port=s.redis.port)
        body = message("idem@example.org")
        other = message("other@example.org")
        shared = False
        for round_ in range(5):
            before_exec = r.info("commandstats").get("cmdstat_exec", {}).get("calls", 0)
            before = set(entries(r))
            key = f"same-{round_}"
            with concurrent.futures.ThreadPoolExecutor(48) as pool:
                answers = list(pool.map(lambda i: requests.post(
                    base + "/v1/messages", json=other if i % 6 == 5 else body, timeout=20,
                    headers={"Authorization": "Bearer " + tokens["plain"], "Idempotency-Key": key}), range(48)))
            codes = [a.status_code for a in answers]
            assert set(codes) <= {202, 409}, codes
            ids = {a.json()["id"] for a in answers if a.status_code == 202}
            new = set(entries(r)) - before
            assert len(ids) == 1 and new == ids
            # whichever payload came first won: the other one's sends are conflicts
            assert codes.count(409) in (8, 40)
            first = [a for a in answers if a.status_code == 202]
            assert sum(1 for a in first if a.headers.get("Idempotent-Replayed") != "true") == 1
            if r.info("commandstats")["cmdstat_exec"]["calls"] - before_exec < 48:
                shared = True
                break
        assert shared, "no two sends of a round shared a transaction"
    finally:
        s.stop_all()


def test_out_of_memory_logs_a_refusal_a_transaction_not_a_command(tmp_path):
    """Under OOM every queued command is refused: one line for the
    transaction (and each send's own 503 line), not one per HSET and XADD."""
    s, tokens, base = own_stack(tmp_path)
    try:
        r = redislib.Redis(port=s.redis.port)
        assert send(base, tokens["plain"], message("warm@example.org")).status_code == 202
        r.config_set("maxmemory", "1")
        try:
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(lambda i: send(base, tokens["plain"], message(f"o{i}@example.org")),
                                        range(48)))
        finally:
            r.config_set("maxmemory", "0")
        assert {a.status_code for a in answers} == {503}
        log = open(os.path.join(s.dir, "nginx-error.log")).read()
        refused = log.count("redis refused a queued command: OOM")
        assert 1 <= refused <= r.info("commandstats")["cmdstat_exec"]["calls"] - 1, refused
        assert send(base, tokens["plain"], message("after@example.org")).status_code == 202
    finally:
        s.stop_all()
