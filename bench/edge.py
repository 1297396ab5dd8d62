"""Edge benchmark: accepted sends per second through nginx + ngx_mail_api_module
(authenticate, validate, seal, one Redis script, 202 after Redis acknowledged
it with appendfsync always) against `return 202` from the same nginx, same
worker, same run, over plain HTTP and over TLS (a second listener of the same
server block, keep-alive).

On a shared machine one pair of runs says little: the baseline and the send
case alternate (A/B/A/B...) BENCH_PAIRS times and the table gives the median
of the per-pair ratios and their spread. Every answer that is not a 2xx and
every socket error is counted; a run with any is invalid (exit 1). The CPU
each process used per request (nginx's worker, redis-server, wrk itself)
says where the time goes; on two cores shared by all three it also bounds
what a ratio can be. Then: latency at half the maximum send rate (and, for
comparison, with the AOF fsynced once a second), the disk's own fsync latency
(the floor under a durable 202), Redis's own ceiling for the send script
(redis-benchmark, pipelined), and the worker's RSS over BENCH_MEMORY_REQUESTS
sends.

usage: bench/edge.py [seconds per case, default 5]
env:   BENCH_PAIRS (5), BENCH_MEMORY_REQUESTS (1000000; 0 skips),
       BENCH_WORKERS (nginx's workers, 1),
       BENCH_PERF=<dir>: perf profiles of nginx's worker and of redis-server
       during the first send case of each protocol (see bench/README.md)
"""
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import redis as redislib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "t"))
import stack as stackmod  # noqa: E402

SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
PAIRS = int(os.environ.get("BENCH_PAIRS", "5"))
# One worker by default: on two cores wrk and Redis need the other; more
# (BENCH_WORKERS=2, as `worker_processes auto` gives here) only share them.
WORKERS = int(os.environ.get("BENCH_WORKERS", "1"))
CONNECTIONS = 32
MANY = 256
# The two protocols, then the two cases that show where the limit is.
UNIX = "plain, nginx to Redis over a Unix socket"
CASES = ("plain", "TLS", f"plain, {MANY} connections", "plain, appendfsync everysec (not durable)", UNIX)
MEMORY_REQUESTS = int(os.environ.get("BENCH_MEMORY_REQUESTS", "1000000"))
PERF_DIR = os.environ.get("BENCH_PERF", "")
DELAYACCT = False  # set in main()
TICK = os.sysconf("SC_CLK_TCK")
STREAM = "mailapi:messages"

POST = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
"""
# Paced: each connection waits this long after an answer before its next
# request (wrk counts latency from the request, not the wait).
# Random waits (mean delay_ms): connections that waited alike would send in
# step, bursts no real traffic has.
PACED = POST + "function delay() return math.random(0, 2 * {delay_ms}) end\n"


def pid_list(pid):
    return list(pid) if isinstance(pid, (list, tuple)) else [pid]


def cpu_s(pid):
    """User + system CPU seconds a process (or a list of them: nginx's
    workers) has used so far."""
    if isinstance(pid, (list, tuple)):
        return sum(cpu_s(p) for p in pid)
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def thread_s(pid):
    """The main thread's time, in seconds: on a core, waiting for a core
    (its run queue: the cores are shared) and waiting for block I/O (an
    fsync; counted only with kernel.task_delayacct=1, else None); for a
    list of processes, their sums."""
    if isinstance(pid, (list, tuple)):
        ts = [thread_s(p) for p in pid]
        return {k: (sum(t[k] for t in ts) if ts[0][k] is not None else None) for k in ts[0]}
    with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
        run_ns, runq_ns = (int(x) for x in f.read().split()[:2])
    blkio = None
    if DELAYACCT:
        with open(f"/proc/{pid}/stat") as f:
            blkio = int(f.read().rsplit(")", 1)[1].split()[39]) / TICK
    return {"run": run_ns / 1e9, "runq": runq_ns / 1e9, "disk": blkio}


def delayacct_on():
    """Block I/O delay accounting, so the disk's share of Redis's time can
    be read; as root it is switched on for the run. Returns how to restore."""
    path = "/proc/sys/kernel/task_delayacct"
    try:
        with open(path) as f:
            before = f.read().strip()
        if before != "1":
            with open(path, "w") as f:
                f.write("1")
        return before
    except OSError:
        return None


def workers_of(nginx):
    """The worker processes of an nginx (its master's children)."""
    for _ in range(50):
        pids = [int(p) for p in subprocess.run(["pgrep", "-P", str(nginx.popen.pid)], capture_output=True,
                                               text=True).stdout.split()]
        if len(pids) >= WORKERS:
            return pids
        time.sleep(0.1)
    sys.exit(f"bench: nginx started {len(pids)} of {WORKERS} workers")


def rss_kib(pid):
    if isinstance(pid, (list, tuple)):
        return sum(rss_kib(p) for p in pid)
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


class Result:
    def __init__(self, out, wrk_cpu, cpu):
        self.rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        self.requests = int(re.search(r"(\d+) requests in", out).group(1))
        self.p50, self.p99 = pct(out, 50), pct(out, 99)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        self.bad = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
        self.cpu = dict(cpu, wrk=wrk_cpu)  # seconds
        self.threads = {}  # {who: thread_s() deltas and the wall time}

    def us_per_request(self, who):
        return self.cpu[who] / max(1, self.requests) * 1e6


def pct(out, p):
    m = re.search(rf"^\s+{p}(?:\.0+)?%\s+([\d.]+)(us|ms|s)\b", out, re.M)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def wrk(url, script, seconds, pids, connections=CONNECTIONS, profile=""):
    """One wrk run; pids: {name: pid} whose CPU is measured across it;
    profile: a name, to record each of them with perf meanwhile."""
    perfs = []
    if profile:
        os.makedirs(PERF_DIR, exist_ok=True)
        for who, pid in pids.items():
            out = os.path.join(PERF_DIR, f"{profile}-{who}.data")
            perfs.append(subprocess.Popen(["perf", "record", "-q", "-F", "1999", "-g", "-p",
                                           ",".join(map(str, pid_list(pid))), "-o", out],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            print(f"    perf: {who} -> perf report -i {out} --no-children", flush=True)
        time.sleep(0.5)
    before = {k: cpu_s(p) for k, p in pids.items()}
    th0, wall0 = {k: thread_s(p) for k, p in pids.items()}, time.monotonic()
    proc = subprocess.Popen(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script, url],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"bench: wrk failed ({proc.returncode}):\n{out}")
    cpu = {k: cpu_s(p) - before[k] for k, p in pids.items()}
    threads = {}
    for who, p in pids.items():
        t0, t1 = th0[who], thread_s(p)
        threads[who] = {k: (t1[k] - t0[k] if t0[k] is not None else None) for k in t0}
        threads[who]["wall"] = time.monotonic() - wall0
    for p in perfs:
        p.send_signal(2)
        p.wait()
    res = Result(out, usage.ru_utime + usage.ru_stime, cpu)
    res.threads = threads
    return res


def message_body(size=1024):
    """The benchmark's message: JSON of exactly `size` bytes."""
    def of(text):
        return json.dumps({"from": "bench@example.com", "to": ["rcpt@example.org"], "subject": "bench",
                           "text": text})
    return of("x" * 700 + "y" * (size - len(of("x" * 700))))


def enqueue_script():
    """ENQUEUE_LUA as common/contract.cpp holds it."""
    with open(os.path.join(stackmod.ROOT, "common", "contract.cpp")) as f:
        return re.search(r'ENQUEUE_LUA\[\] = R"lua\((.*?)\)lua"', f.read(), re.S).group(1)


def empty_redis(r):
    """Between cases: what the last one queued goes, and the AOF is
    rewritten so the disk holds one case at most."""
    r.flushall()
    while r.info("persistence")["aof_rewrite_in_progress"]:
        time.sleep(0.1)
    r.bgrewriteaof()
    while r.info("persistence")["aof_rewrite_in_progress"] or r.info("persistence")["aof_rewrite_scheduled"]:
        time.sleep(0.1)


def check_queued(r, res, label, taken=0):
    """Every 2xx wrk counted is an entry in the stream (a 202 is a promise),
    or was taken out by a Drain."""
    n = r.xlen(STREAM) + taken
    if n < res.requests:
        sys.exit(f"bench: {label}: {res.requests} answers but only {n} entries in Redis")


def exec_calls(r):
    """EXECs Redis ran so far: each is one loop turn's sends of the worker."""
    return r.info("commandstats").get("cmdstat_exec", {}).get("calls", 0)


def median_spread(values):
    return statistics.median(values), min(values), max(values)


def main():
    for tool in ("wrk", "redis-benchmark"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is missing: run ./build.sh deps")
    global DELAYACCT
    restore = delayacct_on()
    DELAYACCT = restore is not None
    if not DELAYACCT:
        print("==> kernel.task_delayacct is off and cannot be set (not root?): Redis's disk wait is not shown",
              flush=True)
    d = tempfile.mkdtemp(prefix="mailapi-bench-")
    s = stackmod.Stack(d)
    key = s.add_key("bench", "bench", "send")
    invalid = []
    su = None
    try:
        print(f"==> starting redis, FerretDB and nginx ({WORKERS} worker{'s' if WORKERS > 1 else ''}, plain and TLS "
              f"listeners) in {d}", flush=True)
        s.start_redis(unix=True)
        s.start_ferretdb()
        tls_port = stackmod.free_port()
        nginx = s.start_nginx(workers=WORKERS, log_level="warn", tls_port=tls_port, access_log=False)
        # The same server in a second nginx whose worker reaches the same
        # Redis over its Unix socket (one host: no TCP between them).
        su = stackmod.Stack(os.path.join(d, "unix"))
        su.redis, su.mongo = s.redis, s.mongo
        ukey = su.add_key("bench", "bench", "send")
        unginx = su.start_nginx(workers=WORKERS, log_level="warn", access_log=False, redis=f"unix:{s.redis.unix}")
        r = redislib.Redis(port=s.redis.port)
        redis_pid = int(r.info("server")["process_id"])
        body = message_body()
        script = os.path.join(d, "post.lua")
        with open(script, "w") as f:
            f.write(POST.format(body=json.dumps(body), token=key.token(ttl=86400)))
        uscript = os.path.join(d, "post-unix.lua")
        with open(uscript, "w") as f:
            f.write(POST.format(body=json.dumps(body), token=ukey.token(ttl=86400)))
        worker = workers_of(nginx)
        uworker = workers_of(unginx)
        pids = {"nginx": worker, "redis": redis_pid}
        upids = {"nginx": uworker, "redis": redis_pid}
        uurl = f"http://127.0.0.1:{unginx.port}"
        urls = {"plain": f"http://127.0.0.1:{nginx.port}", "TLS": f"https://127.0.0.1:{tls_port}"}

        # warm-up: connections, the script loaded, the allocator's arenas
        for u in urls.values():
            wrk(u + "/v1/messages", script, 2, pids)
        wrk(uurl + "/v1/messages", uscript, 2, upids)
        empty_redis(r)

        print(f"==> {PAIRS} pairs x 2 protocols, {SECONDS}s per case, wrk 1 thread {CONNECTIONS} connections, "
              f"body {len(body)} bytes", flush=True)
        runs = {(proto, case): [] for proto in CASES for case in ("baseline", "send")}

        def send_case(label, base, pids, connections=CONNECTIONS, profile="", script=script):
            execs = exec_calls(r)
            m = wrk(base + "/v1/messages", script, SECONDS, pids, connections=connections, profile=profile)
            m.per_exec = r.xlen(STREAM) / max(1, exec_calls(r) - execs)
            check_queued(r, m, label)
            empty_redis(r)
            return m

        for i in range(PAIRS):
            for proto, base in urls.items():
                b = wrk(base + "/baseline", script, SECONDS, pids)
                m = send_case(f"{proto} send", base, pids, profile=f"send-{proto}" if PERF_DIR and i == 0 else "")
                runs[(proto, "baseline")].append(b)
                runs[(proto, "send")].append(m)
                print(f"    pair {i + 1} {proto:5}: return 202 {b.rps:9,.0f}/s   send {m.rps:9,.0f}/s   "
                      f"ratio {m.rps / b.rps:.2f}   sends per EXEC {m.per_exec:.1f}   "
                      f"non-2xx/errors {b.bad + m.bad}", flush=True)
            # Where the limit is: more connections (a send waits for an
            # fsync: 32 in flight cap the rate at 32 / its latency), and the
            # AOF fsynced once a second instead of before each 202 (not what
            # the service promises; for comparison only).
            many = CASES[2]
            b = wrk(urls["plain"] + "/baseline", script, SECONDS, pids, connections=MANY)
            m = send_case(many, urls["plain"], pids, connections=MANY)
            runs[(many, "baseline")].append(b)
            runs[(many, "send")].append(m)
            lazy = CASES[3]
            r.config_set("appendfsync", "everysec")
            try:
                m2 = send_case(lazy, urls["plain"], pids)
            finally:
                r.config_set("appendfsync", "always")
            runs[(lazy, "baseline")].append(runs[("plain", "baseline")][-1])
            runs[(lazy, "send")].append(m2)
            m3 = send_case(UNIX, uurl, upids, script=uscript)
            runs[(UNIX, "baseline")].append(runs[("plain", "baseline")][-1])
            runs[(UNIX, "send")].append(m3)
            print(f"    pair {i + 1} {MANY} connections: return 202 {b.rps:9,.0f}/s   send {m.rps:9,.0f}/s   "
                  f"ratio {m.rps / b.rps:.2f}   sends per EXEC {m.per_exec:.1f};   appendfsync everysec: "
                  f"send {m2.rps:,.0f}/s;   Unix socket: send {m3.rps:,.0f}/s   "
                  f"non-2xx/errors {b.bad + m.bad + m2.bad + m3.bad}", flush=True)
        for (proto, case), rs in runs.items():
            bad = sum(x.bad for x in rs)
            if bad:
                invalid.append(f"{proto} {case}: {bad} non-2xx answers or socket errors")

        # Latency at half the median maximum send rate, each protocol.
        paced, fsyncs_under_load = {}, {}
        for proto, base in urls.items():
            target = statistics.median(x.rps for x in runs[(proto, "send")]) / 2
            delay_ms = 10
            conns = max(1, math.ceil(target * delay_ms / 1000))
            pscript = os.path.join(d, f"paced-{proto}.lua")
            with open(pscript, "w") as f:
                f.write(PACED.format(body=json.dumps(body), token=key.token(ttl=86400), delay_ms=delay_ms))
            print(f"==> {proto}: paced at about {target:,.0f}/s ({conns} connections, {delay_ms} ms between "
                  f"a connection's requests)", flush=True)

            def paced_run(label, drain=True, fsync="always", trace=False):
                """One paced run; drain: the queue emptied as deliveryd
                would (a service's steady state), else left to grow;
                trace: Redis's fdatasync calls timed meanwhile (perf trace)."""
                r.config_set("appendfsync", fsync)
                rw = r.info("persistence")["aof_rewrites"]
                tracer = fsync_tracer(redis_pid, d) if trace else None
                try:
                    if drain:
                        with Drain(r, 0.02, 200) as dr:
                            res = wrk(base + "/v1/messages", pscript, max(SECONDS, 10), pids, connections=conns)
                    else:
                        res = wrk(base + "/v1/messages", pscript, max(SECONDS, 10), pids, connections=conns)
                finally:
                    r.config_set("appendfsync", "always")
                    if tracer:
                        fsyncs_under_load[label] = tracer.stop()
                res.rewrites = r.info("persistence")["aof_rewrites"] - rw
                check_queued(r, res, f"{label} paced", dr.taken if drain else 0)
                empty_redis(r)
                if res.bad:
                    invalid.append(f"{label} paced: {res.bad} non-2xx answers or socket errors")
                paced[label] = (target, res)

            paced_run(f"{proto}, queue drained as deliveryd would")
            if proto == "plain":
                # The queue left to grow (deliveryd stopped): Redis's AOF
                # rewrites then copy all of it, while the sends go on.
                paced_run("plain, queue left to grow", drain=False)
                # The AOF fsynced once a second: what of the latency is the
                # disk's (comparison only, not durable).
                paced_run("plain, queue drained, appendfsync everysec (not durable)", fsync="everysec")
                # Again, with each of Redis's fsyncs timed: what the disk
                # does under this load, against what a 202 waits for.
                if shutil.which("perf"):
                    paced_run("plain, queue drained, Redis's fdatasync traced", trace=True)
                else:
                    print("==> perf is missing (apt-get install linux-perf): the fsyncs under load are not timed",
                          flush=True)
        # The floor under any durable 202: one fsync of Redis's AOF disk,
        # nothing else running.
        fsync = fsync_latency(s.dir)

        # Redis alone (no nginx): what its one thread can take, per message.
        alone = redis_alone(r, redis_pid, s.redis.port, len(body) + 60, invalid)

        mem = None
        if MEMORY_REQUESTS:
            mem = memory(r, urls["plain"], script, pids, worker,
                         statistics.median(x.rps for x in runs[("plain", "send")]))
            if mem[0].bad:
                invalid.append(f"memory: {mem[0].bad} non-2xx answers or socket errors")

        report(runs, paced, fsync, fsyncs_under_load, alone, mem)
    finally:
        if su:
            su.stop_all()
        s.stop_all()
        shutil.rmtree(d, ignore_errors=True)
        if restore not in (None, "1"):
            with open("/proc/sys/kernel/task_delayacct", "w") as f:
                f.write(restore)
    if invalid:
        print("\nINVALID RUN (discard these figures):\n  " + "\n  ".join(invalid))
        sys.exit(1)


def redis_busy(r, redis_pid, run):
    """Runs run() against Redis; returns Redis's process CPU and its main
    thread's busy time (on a core + waiting for the disk), in seconds."""
    c0, t0 = cpu_s(redis_pid), thread_s(redis_pid)
    run()
    c1, t1 = cpu_s(redis_pid), thread_s(redis_pid)
    disk = t1["disk"] - t0["disk"] if DELAYACCT else float("nan")
    return c1 - c0, t1["run"] - t0["run"] + disk


def redis_alone(r, redis_pid, port, envelope_len, invalid):
    """Redis's own ceiling, no nginx: per message, its CPU and its main
    thread's busy time (a core or the disk), and the rate that thread could
    take if it were never idle. Rows: a bare XADD of the envelope's size
    (the least a queued message can cost), the plain path as the module
    sends it (MULTI, B x HSET + XADD, EXEC; one connection, one transaction
    at a time, so each EXEC has its own fsync, as at 32 connections), and
    the send script."""
    rows = []
    envelope = "e" * envelope_len

    def bench(name, n, args):
        print(f"==> Redis alone: {name} ({n:,}, redis-benchmark, 4 connections, pipeline 32)", flush=True)
        out = []

        def run():
            out.append(subprocess.run(["redis-benchmark", "-p", str(port), "-n", str(n), "-c", "4", "-P", "32",
                                       "-r", "100000000", "-q"] + args, capture_output=True, text=True).stdout)
        cpu, busy = redis_busy(r, redis_pid, run)
        if r.xlen(STREAM) < n * 0.99:
            invalid.append(f"redis-benchmark {name}: {r.xlen(STREAM)} entries of {n} ({out[0][-300:]})")
        rows.append((name, n, cpu, busy))
        empty_redis(r)

    bench("XADD, one field of the envelope's size", 300000, ["XADD", STREAM, "*", "env", envelope])
    for per_exec in (10, 80):
        name = f"HSET + XADD, {per_exec} per MULTI/EXEC (the plain path)"
        n = 40000 if DELAYACCT else 20000
        print(f"==> Redis alone: {name} ({n:,}, one connection, one transaction at a time)", flush=True)
        c = redislib.Redis(port=port)

        def run():
            for t in range(n // per_exec):
                pl = c.pipeline(transaction=True)
                for j in range(per_exec):
                    mid = f"bench{t}x{j}"
                    pl.hset(f"{STREAM}:{mid}", mapping={"tenant": "bench", "created": "1764800000000", "send_at": "0",
                                                         "env": envelope, "rk": "r1:" + "a" * 32})
                    pl.xadd(STREAM, {"id": mid, "tenant": "bench", "created": "1764800000000", "send_at": "0",
                                     "attempt": "0", "gen": "0", "size": str(envelope_len)})
                pl.execute()
        cpu, busy = redis_busy(r, redis_pid, run)
        rows.append((name, n, cpu, busy))
        c.close()
        empty_redis(r)
    sha = r.script_load(enqueue_script())
    bench("ENQUEUE_LUA, the send script", 300000,
          ["EVALSHA", sha, "5", STREAM, f"{STREAM}:msg___rand_int__", "", "rl:none", "q:none",
           "1", "msg___rand_int__", "bench", "1", "0", envelope, "", "0", "0", "0", "0", "0", "0", "k"])
    return rows


# KEYS: stream, hash prefix. ARGV: at most this many. Takes the oldest
# entries and their hashes out, as deliveryd would after sending them.
TRIM_LUA = """
local e = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', tonumber(ARGV[1]))
for _, x in ipairs(e) do
  local f = x[2]
  for i = 1, #f, 2 do
    if f[i] == 'id' then redis.call('DEL', KEYS[2] .. f[i + 1]) break end
  end
  redis.call('XDEL', KEYS[1], x[1])
end
return #e
"""


class Drain:
    """Takes queued entries and their hashes out as deliveryd would after
    sending them, every `every` s at most `count` at a time (a Lua call of
    that size; small ones where latency is measured), so Redis holds what a
    service in steady state holds, not all that a run queued. `taken`
    counts what went, for check_queued."""

    def __init__(self, r, every, count):
        self.trim, self.every, self.count = r.register_script(TRIM_LUA), every, count
        self.stop, self.taken = threading.Event(), 0
        self.thread = threading.Thread(target=self.run)

    def run(self):
        while not self.stop.wait(self.every):
            while True:
                n = self.trim(keys=[STREAM, STREAM + ":"], args=[self.count])
                self.taken += n
                if n < self.count:
                    break

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def memory(r, base, script, pids, worker, rate):
    """Worker RSS across about MEMORY_REQUESTS sends, after the runs above
    warmed it up, with the queue drained as deliveryd would: this measures
    nginx, not Redis."""
    rss0 = rss_kib(worker)
    print(f"==> memory: at least {MEMORY_REQUESTS:,} sends (about {MEMORY_REQUESTS / rate:.0f}s)", flush=True)
    with Drain(r, 0.5, 20000):
        res = wrk(base + "/v1/messages", script, max(5, int(MEMORY_REQUESTS / rate) + 1), pids)
        while res.requests < MEMORY_REQUESTS:  # the rate was lower than the runs above: on until the count
            more = wrk(base + "/v1/messages", script, max(2, int((MEMORY_REQUESTS - res.requests) / rate) + 1), pids)
            res.requests += more.requests
            res.bad += more.bad
    rss1 = rss_kib(worker)
    empty_redis(r)
    return res, rss0, rss1


class fsync_tracer:
    """Redis's fdatasync calls, each timed, by `perf trace` (its tracepoints
    cost Redis a little: the run it watches is an extra one)."""

    def __init__(self, pid, directory):
        self.out = os.path.join(directory, "fdatasync.trace")
        self.proc = subprocess.Popen(["perf", "trace", "-e", "fdatasync", "-p", str(pid), "-o", self.out],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.t0 = time.monotonic()
        time.sleep(0.5)

    def stop(self):
        """Milliseconds of each call, sorted, and the seconds traced."""
        self.proc.send_signal(2)
        self.proc.wait()
        seconds = time.monotonic() - self.t0
        try:
            with open(self.out) as f:
                took = sorted(float(m.group(1)) for m in re.finditer(r"\(\s*([\d.]+) ms\)", f.read()))
        except OSError:
            took = []
        return took, seconds


def fsync_latency(directory, n=3000, size=1300):
    """Milliseconds one append + fsync takes on the disk Redis's AOF is on,
    as Redis does per EXEC under appendfsync always: p50, p99, max."""
    print(f"==> the disk alone: {n:,} appends of {size} bytes, each fsynced, in {directory}", flush=True)
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    took = []
    try:
        for _ in range(n):
            t = time.perf_counter()
            os.write(fd, b"x" * size)
            os.fsync(fd)
            took.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        os.unlink(path)
    took.sort()
    return took[n // 2], took[n * 99 // 100], took[-1]


def limits(runs):
    """Where each send case's limit is: Redis's one thread (its share of the
    wall time on a core, waiting for the disk, waiting for a core), and
    what 0.5 of the baseline would leave nginx on two shared cores."""
    print()
    print("| share of the time during the send (median) | sends/s | Redis on a core | Redis waiting for the disk | "
          "Redis waiting for a core | Redis idle | Redis's ceiling, sends/s | nginx worker on a core | "
          "nginx waiting for a core | nginx's ceiling, sends/s | 2 cores / all three |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    pct = (lambda v: f"{v * 100:.0f}%" if v == v else "n/a")
    def share(x, who, k):
        v = x.threads[who][k]
        return v / x.threads[who]["wall"] if v is not None else float("nan")

    for proto in CASES[:3]:
        # The baseline: is one worker the bound (on a core nearly all the time)?
        rs = runs[(proto, "baseline")]
        nrun, nrunq = (statistics.median(share(x, "nginx", k) for x in rs) for k in ("run", "runq"))
        nceil = statistics.median(x.requests / x.threads["nginx"]["run"] for x in rs)
        total = statistics.median(sum(x.us_per_request(w) for w in ("nginx", "redis", "wrk")) for x in rs)
        print(f"| return 202, {proto} | {statistics.median(x.rps for x in rs):,.0f} | | | | | | {pct(nrun)} | "
              f"{pct(nrunq)} | {nceil:,.0f} | {2e6 / total:,.0f} |")
    for proto in CASES:
        rs = [x for x in runs[(proto, "send")] if "redis" in x.threads]
        if not rs:
            continue

        run, disk, runq = (statistics.median(share(x, "redis", k) for x in rs) for k in ("run", "disk", "runq"))
        idle = 1 - run - disk - runq if disk == disk else float("nan")
        nrun, nrunq = (statistics.median(share(x, "nginx", k) for x in rs) for k in ("run", "runq"))
        # Sends per second of a thread's busy time (a core, or for Redis
        # the disk too): what it could take at this batch size if it were
        # never idle nor waiting for a core.
        rceil = statistics.median(x.requests / (x.threads["redis"]["run"] + (x.threads["redis"]["disk"] or 0))
                                  for x in rs)
        nceil = statistics.median(x.requests / x.threads["nginx"]["run"] for x in rs)
        total = statistics.median(sum(x.us_per_request(w) for w in ("nginx", "redis", "wrk")) for x in rs)
        print(f"| POST /v1/messages, {proto} | {statistics.median(x.rps for x in rs):,.0f} | {pct(run)} | {pct(disk)} | {pct(runq)} | "
              f"{pct(idle)} | {rceil:,.0f}{'' if disk == disk else ' (CPU only)'} | {pct(nrun)} | {pct(nrunq)} | "
              f"{nceil:,.0f} | {2e6 / total:,.0f} |")
    print()
    print("| what 0.5 of return 202 leaves nginx (2 cores shared), µs per send | return 202/s | half | "
          "budget, all three | wrk + Redis (measured) | left for nginx | nginx now | nginx's return 202 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for proto in ("plain", "TLS", CASES[2]):
        bs, ms = runs[(proto, "baseline")], runs[(proto, "send")]
        base = statistics.median(x.rps for x in bs)
        budget = 2e6 / (base / 2)
        others = statistics.median(x.us_per_request("wrk") + x.us_per_request("redis") for x in ms)
        nginx = statistics.median(x.us_per_request("nginx") for x in ms)
        nginx202 = statistics.median(x.us_per_request("nginx") for x in bs)
        print(f"| {proto} | {base:,.0f} | {base / 2:,.0f} | {budget:.1f} | {others:.1f} | {budget - others:.1f} | "
              f"{nginx:.1f} | {nginx202:.1f} |")


def report(runs, paced, fsync, fsyncs_under_load, alone, mem):
    print()
    print(f"| case | req/s (median of {PAIRS}) | p50 ms | p99 ms | non-2xx + errors | send / return 202 "
          f"(median) | spread (min-max) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for proto in CASES:
        bs, ms = runs[(proto, "baseline")], runs[(proto, "send")]
        ratios = [m.rps / b.rps for b, m in zip(bs, ms)]
        med, lo, hi = median_spread(ratios)
        for name, rs in ((f"return 202, {proto}", bs), (f"POST /v1/messages, {proto}", ms)):
            if rs is bs and proto in CASES[3:]:
                continue  # the plain baseline
            rps = statistics.median(x.rps for x in rs)
            p50 = statistics.median(x.p50 for x in rs)
            p99 = statistics.median(x.p99 for x in rs)
            bad = sum(x.bad for x in rs)
            ratio = (f"{med:.2f} | {lo:.2f}-{hi:.2f}" if rs is ms else "1.00 | ")
            print(f"| {name} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {bad} | {ratio} |")
    print()
    print("| CPU per request (median), µs | nginx worker | redis-server | wrk | all three | "
          "2 cores / all three | sends per EXEC |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for proto in CASES:
        for case, name in (("baseline", "return 202"), ("send", "POST /v1/messages")):
            if case == "baseline" and proto in CASES[3:]:
                continue
            rs = runs[(proto, case)]
            per = {w: statistics.median(x.us_per_request(w) for x in rs) for w in ("nginx", "redis", "wrk")}
            total = sum(per.values())
            batch = f"{statistics.median(x.per_exec for x in rs):.1f}" if case == "send" else ""
            print(f"| {name}, {proto} | {per['nginx']:.1f} | {per['redis']:.1f} | {per['wrk']:.1f} | {total:.1f} | "
                  f"{2e6 / total:,.0f}/s | {batch} |")
    print()
    print("| at half the maximum send rate | target req/s | achieved | p50 ms | p99 ms | AOF rewrites | "
          "nginx waiting for a core | Redis waiting for a core | non-2xx + errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for proto, (target, res) in paced.items():
        waits = [f"{res.threads[w]['runq'] / res.threads[w]['wall'] * 100:.1f}%" for w in ("nginx", "redis")]
        print(f"| POST /v1/messages, {proto} | {target:,.0f} | {res.rps:,.0f} | {res.p50:.2f} | {res.p99:.2f} | "
              f"{res.rewrites} | {waits[0]} | {waits[1]} | {res.bad} |")
    print()
    print("| the disk alone: append + fsync, as each EXEC does | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|")
    print(f"| Redis's AOF directory | {fsync[0]:.2f} | {fsync[1]:.2f} | {fsync[2]:.2f} |")
    for label, (took, seconds) in fsyncs_under_load.items():
        if not took:
            print(f"| Redis's fdatasync, {label} | (perf trace recorded nothing) | | |")
            continue
        n = len(took)
        print(f"| Redis's own fdatasync calls, {label}: {n:,} in {seconds:.0f} s | {took[n // 2]:.2f} | "
              f"{took[n * 99 // 100]:.2f} | {took[-1]:.2f} |")
        # A send that reaches Redis while an fsync has more than 2 ms to
        # go waits longer than 2 ms: past 1% of the time, no p99 < 2 ms.
        beyond = sum(max(0.0, t - 2) for t in took) / 1000 / seconds
        print(f"| share of that time within an fsync with more than 2 ms to go (a send arriving then waits "
              f"> 2 ms) | {beyond * 100:.2f}% | | |")
    print()
    print("| Redis alone (no nginx), per message | messages | redis CPU µs | main thread busy µs (core + disk) | "
          "ceiling of that thread, /s |")
    print("|---|---:|---:|---:|---:|")
    for name, n, cpu, busy in alone:
        ceiling = f"{n / busy:,.0f}" if busy == busy and busy > 0 else "n/a"
        print(f"| {name} | {n:,} | {cpu / n * 1e6:.1f} | {busy / n * 1e6:.1f} | {ceiling} |")
    limits(runs)
    if mem:
        res, rss0, rss1 = mem
        print()
        print("| memory | requests | worker RSS before | after | growth | non-2xx + errors |")
        print("|---|---:|---:|---:|---:|---:|")
        print(f"| POST /v1/messages | {res.requests:,} | {rss0 / 1024:.1f} MiB | {rss1 / 1024:.1f} MiB | "
              f"{(rss1 - rss0) / 1024:.2f} MiB | {res.bad} |")


if __name__ == "__main__":
    main()
