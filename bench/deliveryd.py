"""deliveryd benchmark: messages per second end to end (stream -> provider ->
MongoDB record -> ack) and peak RSS, each case with its baseline measured on
the same machine in the same run.

For every case the stream is emptied, N messages are queued through nginx
with the module (wrk POST /v1/messages), then one deliveryd is started and
timed until every entry is acknowledged (the record is written before the
ack, so acked = recorded); the records are counted once at the end.

  HTTP (SendGrid v3)  provider: Debian's nginx answering 202 on /v3/mail/send
                      baseline: that nginx fed directly by wrk (one thread,
                      as many connections as deliveryd opens, the same JSON)
  SMTP (sink)         provider: postfix's smtp-sink (C, discards the mail)
                      baseline: that sink fed directly by postfix's
                      smtp-source (C), 16 sessions each keeping its connection
  SMTP (Maildir)      provider: t/smtp_server.py (aiosmtpd writing a Maildir,
                      the tests' server); baseline: the same, fed by
                      smtp-source
  records             the store (FerretDB over PostgreSQL) fed directly by
                      pymongo with documents of the records' shape and their
                      indexes, 512 a batch: the ceiling of every case
  Redis memory        used_memory before 200,000 messages are queued, with
                      them queued, and once deliveryd has delivered them
  10k in flight       max_in_flight 10000 against the nginx stand-in holding
                      every answer (limit_req): peak RSS once 10,000 messages
                      are in flight; baseline: deliveryd's RSS at rest

usage: bench/deliveryd.py [N messages per throughput case, default 50000]
       (the Maildir case sends min(N, 10000): its server is slow)
       BENCH_CASES=http,sink,maildir,inflight,redis runs only those
       BENCH_DELIVERYD="name=value ..." sets deliveryd settings of the throughput cases
       BENCH_REPEAT=K drains the HTTP case K times (default 3) and reports the median:
       on a shared 2-core VM one run moves by +-20%
"""
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "t"))
import pymongo  # noqa: E402
import redis  # noqa: E402

import records  # noqa: E402
import stack as stackmod  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 50000
N_MAILDIR = min(N, 10000)
N_INFLIGHT = 10000
# a subset for quick looks: BENCH_CASES=http,sink,maildir,inflight (default all)
CASES = set(os.environ.get("BENCH_CASES", "http,sink,maildir,inflight,redis").split(","))
N_REDIS = int(os.environ.get("BENCH_REDIS_MESSAGES", "200000"))
# deliveryd settings for the throughput cases, over the defaults below: BENCH_DELIVERYD="max_in_flight=2048 batch=512"
CEILING = []  # records/s FerretDB takes on its own, once measured
EXTRA = dict(kv.split("=", 1) for kv in os.environ.get("BENCH_DELIVERYD", "").split())
REPEAT = max(1, int(os.environ.get("BENCH_REPEAT", "3")))
NOTES = []  # printed under the table
CONNECTIONS = 16   # deliveryd's connections_per_host default, used for every baseline too
STREAM = "mailapi:messages"
TEXT = "x" * 900   # a ~1 KiB message, as in bench/edge.py


def say(msg):
    print(f"==> {msg}", flush=True)


def status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))
    except (OSError, AttributeError):
        return 0


# -- filling the stream through nginx ------------------------------------

def fill(s, r, key, n, empty_first=True):
    """Queues exactly n messages through nginx, printing progress. wrk has
    no request count: its one thread sends n POSTs, then only GET /baseline
    (nginx's `return 202`, which queues nothing); this process watches XLEN
    and interrupts wrk (SIGINT ends its run at once) when the stream stops
    growing, then posts what is missing itself: wrk calls request() once
    before the run to check the script, so its count is one short.

    The earlier fill stopped the thread from Lua (wrk.thread:stop()) after n
    answers: that does not end wrk's run, whose main thread sleeps for -d
    regardless (it sat out its 120 s), and the connections' last turns sent
    a few too many."""
    if empty_first:
        r.delete(STREAM)  # the group goes with it; the next deliveryd creates it again
    base = r.xlen(STREAM)
    body = json.dumps({"from": "bench@example.com", "to": ["rcpt@example.org"], "subject": "bench",
                       "text": TEXT})
    token = key.token(ttl=86400)
    script = os.path.join(s.dir, "fill.lua")
    with open(script, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                f'wrk.headers["Content-Type"] = "application/json"\n'
                f'wrk.headers["Authorization"] = "Bearer {token}"\n'
                f'local sent, limit = 0, {n}\n'
                f'function request()\n'
                f'  sent = sent + 1\n'
                f'  if sent > limit then return wrk.format("GET", "/baseline") end\n'
                f'  return wrk.format()\n'
                f'end\n')
    t0 = time.time()
    url = f"http://127.0.0.1:{s.nginx.port}/v1/messages"
    wrk = subprocess.Popen(["wrk", "-t1", "-c8", "-d600s", "-s", script, url],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last, moved, before = 0, time.time(), -1
    while wrk.poll() is None:
        queued = r.xlen(STREAM) - base
        if queued >= n:
            break
        if queued != before:
            moved, before = time.time(), queued
        elif time.time() - moved > (1 if queued else 10):
            break  # wrk has sent its POSTs (or is stuck: its output says why)
        if time.time() - last >= 2:
            print(f"    queued {queued:,}/{n:,}", flush=True)
            last = time.time()
        time.sleep(0.05)
    if wrk.poll() is None:
        wrk.send_signal(signal.SIGINT)
    out = wrk.communicate(timeout=30)[0]
    queued = r.xlen(STREAM) - base
    if 0 < n - queued <= 16:
        for _ in range(n - queued):
            req = urllib.request.Request(url, data=body.encode(), method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": "Bearer " + token})
            urllib.request.urlopen(req, timeout=10).read()
        queued = r.xlen(STREAM) - base
    if queued != n:
        raise SystemExit(f"bench: nginx queued {queued:,} of {n:,}; wrk said:\n{out}")
    say(f"queued {queued:,} through nginx in {time.time() - t0:.1f} s")
    return queued


# -- deliveryd runs --------------------------------------------------------

def progress(r, queued):
    """(finished entries, all done) of the stream: a finished entry leaves
    it (XDEL with its ack) and a retry waits in the scheduled set."""
    left = r.xlen(STREAM) + r.zcard("mailapi:scheduled")
    return queued - left, left == 0


def empty_store(s):
    """Every record gone, the tables and their indexes kept."""
    s.psql(f"TRUNCATE mailapi.{s.store_table('messages')}, mailapi.{s.store_table('hints')}")


def records_sent(s):
    """(message documents whose first outcome was sent, event documents),
    counted in PostgreSQL (a count through FerretDB would read every record)."""
    table = s.store_table("messages")
    sent = s.psql(f"SELECT count(*) FROM mailapi.{table} WHERE _jsonb->'events' @> "
                  """'[{"eid": "t0", "type": "sent"}]'""")
    events = s.psql(f"SELECT count(*) FROM mailapi.{table} WHERE _jsonb ? 'eid'")
    return int(sent), int(events)


def drain(s, r, coll, name, queued, **conf):
    """Starts deliveryd with `conf`, times it until all `queued` entries are
    acked and none waits for a retry; returns (msg/s, peak RSS KiB)."""
    empty_store(s)
    # send_timeout: conf/deliveryd.conf's 60 s, not the tests' 4 s (see the README)
    conf = dict(dict(max_in_flight=2048, batch=512, send_timeout=60, claim_idle=120, retry_base=1,
                     max_attempts=4), **conf, **EXTRA)
    t0 = time.time()
    dd = s.start_deliveryd(name=name, **conf)
    last, last_acked = time.time(), 0
    while True:
        acked, finished = progress(r, queued)
        if finished:
            break
        now = time.time()
        if now - last >= 2:
            print(f"    acked {acked:,}/{queued:,}  ({(acked - last_acked) / (now - last):,.0f} msg/s, "
                  f"RSS {status_kib(dd.popen.pid, 'VmRSS') / 1024:.1f} MiB)", flush=True)
            last, last_acked = now, acked
        if not dd.alive():
            raise SystemExit(f"bench: deliveryd exited; log {dd.log}:\n{dd.log_tail()}")
        if now - t0 > 600:
            raise SystemExit(f"bench: only {acked:,}/{queued:,} acked after 600 s; log {dd.log}")
        time.sleep(0.1)
    elapsed = time.time() - t0
    peak = status_kib(dd.popen.pid, "VmHWM")
    dd.stop()
    s.procs.remove(dd)
    sent, events = records_sent(s)
    dead = r.xlen("mailapi:dead")
    with open(dd.log, errors="replace") as f:
        failed = sum('"msg":"send failed"' in line for line in f)
    if sent != queued or dead or (events and not failed):
        raise SystemExit(f"bench: {name}: {sent:,} records say sent of {queued:,} queued, {events:,} later "
                         f"events, {dead} dead letters; log {dd.log}")
    rate = queued / elapsed
    say(f"{name}: {queued:,} messages in {elapsed:.1f} s = {rate:,.0f} msg/s, all {sent:,} recorded as sent"
        + (f" ({failed:,} sends failed and were retried)" if failed else ""))
    return rate, peak


# -- baselines --------------------------------------------------------------

def sendgrid_body():
    """The shape deliveryd sends for the fill's message (personalizations,
    custom_args, from, subject, content)."""
    return json.dumps({"personalizations": [{"to": [{"email": "rcpt@example.org"}],
                                             "custom_args": {"mailapi_id": "m_" + "A" * 26}}],
                       "from": {"email": "bench@example.com"}, "subject": "bench",
                       "content": [{"type": "text/plain", "value": TEXT}]}, separators=(",", ":"))


def http_baseline(s, port, seconds=5):
    script = os.path.join(s.dir, "sendgrid.lua")
    with open(script, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(sendgrid_body())}\n'
                f'wrk.headers["Content-Type"] = "application/json"\n'
                f'wrk.headers["Authorization"] = "Bearer x"\n'
                f'wrk.headers["X-Mailapi-Id"] = "m_{"A" * 26}"\n')
    out = subprocess.run(["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "-s", script,
                          f"http://127.0.0.1:{port}/v3/mail/send"],
                         capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"bench: the HTTP stand-in did not answer 202 to everything:\n{out}")
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), reqs


def smtp_baseline(port, n):
    """smtp-source: CONNECTIONS sessions in parallel, each sending its
    messages over one connection (-d), as deliveryd's reused connections."""
    t0 = time.time()
    subprocess.run([os.path.join(stackmod.POSTFIX, "smtp-source"), "-s", str(CONNECTIONS), "-m", str(n),
                    "-l", str(len(TEXT)), "-d", "-f", "bench@example.com", "-t", "rcpt@example.org",
                    "-S", "bench", f"127.0.0.1:{port}"], check=True, env=stackmod.postfix_env(), timeout=600)
    return n / (time.time() - t0)


# -- 10,000 in flight ---------------------------------------------------------

def metric(dd, name):
    with urllib.request.urlopen(dd.admin + "/metrics", timeout=5) as resp:
        m = re.search(rf"^{name} (\S+)$", resp.read().decode(), re.M)
    return float(m.group(1)) if m else 0


def in_flight_rss(s, r, coll, sink_port):
    """deliveryd with max_in_flight 10000 against a provider that holds every
    answer: RSS at rest, then the peak once 10,000 messages are in flight."""
    empty_store(s)
    dd = s.start_deliveryd(name="deliveryd-inflight", providers="sendgrid",
                           sendgrid_url=f"http://127.0.0.1:{sink_port}/hold", sendgrid_api_key="x",
                           max_in_flight=N_INFLIGHT, batch=1000, send_timeout=600, claim_idle=1200,
                           shutdown_grace=1)
    # at rest: connected, nothing queued (the stream was emptied)
    time.sleep(1)
    rest = status_kib(dd.popen.pid, "VmRSS")
    fill_started = time.time()
    fill(s, r, s.bench_key, N_INFLIGHT + 500, empty_first=False)
    last = 0
    while True:
        n = metric(dd, "deliveryd_in_flight")
        if n >= N_INFLIGHT:
            break
        if time.time() - last >= 2:
            print(f"    in flight {n:,.0f}/{N_INFLIGHT:,}", flush=True)
            last = time.time()
        if time.time() - fill_started > 120:
            raise SystemExit(f"bench: only {n:,.0f} in flight after 120 s; log {dd.log}")
        time.sleep(0.2)
    time.sleep(2)  # let it settle with everything in flight
    n = metric(dd, "deliveryd_in_flight")
    rss, peak = status_kib(dd.popen.pid, "VmRSS"), status_kib(dd.popen.pid, "VmHWM")
    say(f"{n:,.0f} in flight: RSS {rss / 1024:.1f} MiB (peak {peak / 1024:.1f} MiB), at rest {rest / 1024:.1f} MiB")
    dd.stop(signal.SIGKILL)  # the held answers never come
    s.procs.remove(dd)
    return rest, peak, int(n)


def record_ceiling(s, r, coll, n, batch=512):
    """What the store takes on its own: n documents shaped like deliveryd's
    records (the envelope of a queued message, a recipient's six bucket keys,
    two events), inserted by pymongo in unordered batches of 512 as
    deliveryd's writer threads do, into a collection with the same indexes
    (the GIN indexes reads use, and the btree indexes deliveryd's
    createIndexes makes). Every deliveryd row is bounded by this."""
    mid = r.xrange(STREAM, count=1)[0][1]["id"]
    env = redis.Redis(port=s.redis.port).hget(f"{STREAM}:{mid}", "env")
    now = datetime.datetime.now(datetime.timezone.utc)
    ms = int(now.timestamp() * 1000)
    docs = [{"_id": f"msg_ceiling{i:016d}", "m": f"msg_ceiling{i:016d}", "tenant": "bench",
             "rk": records.bucket_keys(f"r{i:021d}", ms), "created_at": now, "envelope": env,
             "events": [{"eid": "q", "type": "queued", "at": now},
                        {"eid": "t0", "type": "sent", "at": now, "provider": "bench", "code": 202}]}
            for i in range(n)]
    scratch = coll.database["bench_ceiling"]
    scratch.drop()
    coll.database.create_collection("bench_ceiling")
    s.gin_indexes("bench_ceiling", ("_id", "m", "rk"))
    scratch.create_index("m", name="m")
    scratch.create_index("rk", name="rk")
    t0 = time.time()

    def part(k):
        c = pymongo.MongoClient(s.mongodb_uri)["mailapi"]["bench_ceiling"]
        for i in range(k * batch, n, 2 * batch):
            c.insert_many(docs[i:i + batch], ordered=False)
    threads = [threading.Thread(target=part, args=(k,)) for k in range(2)]  # two connections, as deliveryd
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = n / (time.time() - t0)
    scratch.drop()
    return rate


def case_redis(s, r, coll, rows):
    """Redis's used_memory with nothing queued, with N_REDIS queued, and after
    deliveryd delivered them (to the HTTP stand-in)."""
    r.flushall()  # what earlier cases left (the in-flight case's held messages)
    time.sleep(0.5)
    before = int(r.info("memory")["used_memory"])
    say(f"Redis memory: queueing {N_REDIS:,} messages (deliveryd stopped)")
    q = fill(s, r, s.bench_key, N_REDIS)
    queued = int(r.info("memory")["used_memory"])
    rate, peak = drain(s, r, coll, "deliveryd-redis", q, providers="sendgrid",
                       sendgrid_url=f"http://127.0.0.1:{s.http_sink.port}", sendgrid_api_key="x")
    after = int(r.info("memory")["used_memory"])
    keys = r.dbsize()
    say(f"Redis used_memory: {before / 2**20:.1f} MiB before, {queued / 2**20:.1f} MiB with {q:,} queued, "
        f"{after / 2**20:.1f} MiB after they were delivered ({keys} keys left)")
    NOTES.append(f"Redis used_memory: {before / 2**20:.1f} MiB before {q:,} messages, {queued / 2**20:.1f} MiB "
                 f"with them queued, {after / 2**20:.1f} MiB once delivered ({keys} key(s) left: the empty stream "
                 f"and its group); deliveryd drained them at {rate:,.0f} msg/s")


def case_http(s, r, coll, rows):
    say(f"HTTP baseline: wrk POST /v3/mail/send on the nginx stand-in, {CONNECTIONS} connections, 5 s")
    base, reqs = http_baseline(s, s.http_sink.port)
    say(f"HTTP baseline: {reqs:,} requests, {base:,.0f} req/s")
    runs = []
    for k in range(REPEAT):
        say(f"run {k + 1}/{REPEAT}: queueing {N:,} messages through nginx for deliveryd -> HTTP (SendGrid v3 stand-in)")
        q = fill(s, r, s.bench_key, N)
        if k == 0:  # shaped like the queued entries
            say(f"record ceiling: {N:,} records inserted into the store directly (pymongo, 512 a batch)")
            ceiling = record_ceiling(s, r, coll, N)
            say(f"record ceiling: {ceiling:,.0f} records/s")
        runs.append(drain(s, r, coll, f"deliveryd-http-{k + 1}", q, providers="sendgrid",
                          sendgrid_url=f"http://127.0.0.1:{s.http_sink.port}", sendgrid_api_key="x"))
    rate, peak = sorted(runs)[len(runs) // 2]
    peak = max(p for _, p in runs)
    NOTES.append(f"deliveryd -> HTTP, {REPEAT} drains of {q:,}: " + ", ".join(f"{x:,.0f}" for x, _ in runs) +
                 " msg/s (the table shows the median)")
    rows += [("HTTP stand-in fed by wrk (baseline)", reqs, base, base, None),
             ("deliveryd -> HTTP (SendGrid v3 stand-in)", q, rate, base, peak),
             ("records: the store fed directly (baseline, bounds every case)", N, ceiling, ceiling, None)]
    CEILING.append(ceiling)


def smtp_case(s, r, coll, rows, server, port, n, name, **conf):
    say(f"SMTP baseline: smtp-source -> {server}, {n:,} messages, {CONNECTIONS} sessions")
    base = smtp_baseline(port, n)
    say(f"SMTP baseline ({server}): {base:,.0f} msg/s")
    say(f"queueing {n:,} messages through nginx for deliveryd -> SMTP ({server})")
    q = fill(s, r, s.bench_key, n)
    rate, peak = drain(s, r, coll, name, q, providers="smtp", **conf)
    rows += [(f"{server} fed by smtp-source (baseline)", n, base, base, None),
             (f"deliveryd -> SMTP ({server})", q, rate, base, peak)]


def case_sink(s, r, coll, rows):
    smtp_case(s, r, coll, rows, "smtp-sink", s.smtp_sink.port, N, "deliveryd-smtp-sink",
              smtp_url=f"smtp://127.0.0.1:{s.smtp_sink.port}/mailapi.test")


def case_maildir(s, r, coll, rows):
    smtp_case(s, r, coll, rows, "Maildir SMTP server", s.smtp.port, N_MAILDIR, "deliveryd-smtp-maildir")


def case_inflight(s, r, coll, rows):
    say(f"{N_INFLIGHT:,} in flight: deliveryd max_in_flight {N_INFLIGHT} against the stand-in holding answers")
    r.delete(STREAM)
    rest, peak, n = in_flight_rss(s, r, coll, s.http_sink.port)
    rows += [("deliveryd at rest (baseline for RSS)", 0, None, rest, rest),
             (f"deliveryd, {n:,} in flight (peak RSS)", n, None, rest, peak)]


def main():
    if not shutil.which("wrk"):
        sys.exit("bench: wrk is missing: run ./build.sh deps")
    if not os.path.exists(os.path.join(stackmod.POSTFIX, "smtp-sink")):
        sys.exit("bench: build/postfix/smtp-sink is missing: run ./build.sh deps")
    d = tempfile.mkdtemp(prefix="deliveryd-bench-")
    s = stackmod.Stack(d)
    s.bench_key = s.add_key("bench", "bench", "send")
    rows = []
    try:
        say(f"starting redis, PostgreSQL + FerretDB, nginx, the Maildir SMTP server, smtp-sink and the nginx HTTP "
            f"stand-in in {d}")
        s.start_redis()
        s.start_ferretdb()
        s.start_smtp()
        s.start_nginx(log_level="warn")
        s.http_sink = s.start_http_sink()
        s.smtp_sink = s.start_smtp_sink()
        r = redis.Redis(port=s.redis.port, decode_responses=True)
        coll = pymongo.MongoClient(s.mongodb_uri)["mailapi"]["messages"]
        for name, case in (("http", case_http), ("sink", case_sink), ("maildir", case_maildir),
                           ("inflight", case_inflight), ("redis", case_redis)):
            if name in CASES:
                case(s, r, coll, rows)
    except BaseException:
        s.stop_all()
        print(f"bench: failed; the stack directory {d} is kept", file=sys.stderr)
        raise
    s.stop_all()
    shutil.rmtree(d, ignore_errors=True)
    print()
    print("| case | messages | msg/s | ratio vs baseline | peak RSS |")
    print("|---|---:|---:|---:|---:|")
    for case, n, rate, ref, rss in rows:
        if rate is None:  # an RSS row: the ratio is of RSS
            print(f"| {case} | {n:,} | | {rss / ref:.2f} (RSS) | {rss / 1024:.1f} MiB |")
        else:
            print(f"| {case} | {n:,} | {rate:,.0f} | {rate / ref:.2f} | "
                  f"{'' if rss is None else f'{rss / 1024:.1f} MiB'} |")
    for note in NOTES:
        print()
        print(note)
    if CEILING:
        print()
        print("deliveryd against the record ceiling: " + ", ".join(
            f"{case.split('(')[1].rstrip(')')} {rate / CEILING[0]:.2f}"
            for case, n, rate, ref, rss in rows if case.startswith("deliveryd ->")))


if __name__ == "__main__":
    main()
