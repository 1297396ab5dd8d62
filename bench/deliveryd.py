"""deliveryd benchmark: messages per second end to end (stream -> provider ->
MongoDB record -> ack) and peak RSS, for N messages queued through nginx
before deliveryd starts, once over SMTP and once over the generic HTTP
provider. Baselines in the same run: the same SMTP server fed directly by 32
smtplib connections, and the same HTTP stand-in fed directly by wrk (what each
server can take on this machine).

usage: bench/deliveryd.py [N messages, default 10000]
"""
import concurrent.futures
import json
import os
import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "t"))
import pymongo  # noqa: E402

import stack as stackmod  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10000


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    except OSError:
        return 0


def fill(s, key, n):
    """Queues n messages through nginx: wrk stops itself after n answers."""
    body = json.dumps({"from": "bench@example.com", "to": ["rcpt@example.org"], "subject": "bench",
                       "text": "x" * 900})
    script = os.path.join(s.dir, "post.lua")
    with open(script, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                f'wrk.headers["Content-Type"] = "application/json"\n'
                f'wrk.headers["Authorization"] = "Bearer {key.token(ttl=86400)}"\n'
                f'local answered = 0\n'
                f'function response(status, headers, body)\n'
                f'  answered = answered + 1\n'
                f'  if answered >= {n} then wrk.thread:stop() end\n'
                f'end\n')
    before = int(subprocess.run(["redis-cli", "-p", str(s.redis.port), "XLEN", "mailapi:messages"],
                                capture_output=True, text=True).stdout.strip() or 0)
    subprocess.run(["wrk", "-t1", "-c4", "-d120s", "-s", script, f"http://127.0.0.1:{s.nginx.port}/v1/messages"],
                   capture_output=True, check=True)
    return int(subprocess.run(["redis-cli", "-p", str(s.redis.port), "XLEN", "mailapi:messages"],
                              capture_output=True, text=True).stdout.strip()) - before


def smtp_baseline(port, n, workers=32):
    msg = "From: bench@example.com\r\nTo: rcpt@example.org\r\nSubject: bench\r\n\r\n" + "x" * 900 + "\r\n"
    def one(count):
        with smtplib.SMTP("127.0.0.1", port) as c:
            for _ in range(count):
                c.sendmail("bench@example.com", ["rcpt@example.org"], msg)
    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, [n // workers] * workers))
    return (n // workers * workers) / (time.time() - t0)


def http_baseline(s, seconds=5):
    body = json.dumps({"id": "x", "tenant": "bench", "message": {"subject": "bench", "text": "x" * 900}})
    script = os.path.join(s.dir, "hook.lua")
    with open(script, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                f'wrk.headers["Content-Type"] = "application/json"\n'
                f'wrk.headers["Authorization"] = "Bearer {s.standin_keys["http"]}"\n')
    out = subprocess.run(["wrk", "-t1", "-c32", f"-d{seconds}s", "-s", script,
                          f"http://127.0.0.1:{s.standin.port}/generic"], capture_output=True, text=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def drain(s, key, n, name, **conf):
    """Queues n messages, then times one deliveryd sending them all."""
    queued = fill(s, key, n)
    coll = pymongo.MongoClient(s.mongodb_uri)["mailapi"]["messages"]
    before = coll.count_documents({"status": "sent"})
    print(f"==> deliveryd ({name}) draining {queued:,} messages", flush=True)
    t0 = time.time()
    dd = s.start_deliveryd(name="deliveryd-" + name, max_in_flight="512", batch="256", **conf)
    peak = 0
    while True:
        peak = max(peak, rss_kib(dd.popen.pid))
        done = coll.count_documents({"status": "sent"}) - before
        if done >= queued:
            break
        if time.time() - t0 > 600:
            raise SystemExit(f"bench: only {done}/{queued} sent after 600 s")
        time.sleep(1)
    rate = queued / (time.time() - t0)
    dd.stop()
    return queued, rate, peak


def main():
    d = tempfile.mkdtemp(prefix="deliveryd-bench-")
    s = stackmod.Stack(d)
    key = s.add_key("bench", "bench", "send")
    try:
        print(f"==> starting redis, FerretDB, SMTP server, HTTP stand-in and nginx in {d}", flush=True)
        s.start_redis()
        s.start_ferretdb()
        s.start_smtp()
        s.start_standin()
        s.start_nginx(log_level="warn")
        print("==> baselines: the SMTP server and the HTTP stand-in fed directly", flush=True)
        smtp_base = smtp_baseline(s.smtp.port, min(N, 5000))
        http_base = http_baseline(s)
        smtp = drain(s, key, N, "smtp")
        http = drain(s, key, N, "http", providers="http", **s.standin_conf())
        print()
        print("| case | messages | msg/s | ratio | peak RSS |")
        print("|---|---:|---:|---:|---:|")
        print(f"| SMTP server fed directly (baseline) | {min(N, 5000):,} | {smtp_base:,.0f} | 1.00 | |")
        print(f"| deliveryd over SMTP: stream -> send -> record -> ack | {smtp[0]:,} | {smtp[1]:,.0f} | "
              f"{smtp[1] / smtp_base:.2f} | {smtp[2] / 1024:.1f} MiB |")
        print(f"| HTTP stand-in fed directly by wrk (baseline) | | {http_base:,.0f} | 1.00 | |")
        print(f"| deliveryd over HTTP: stream -> send -> record -> ack | {http[0]:,} | {http[1]:,.0f} | "
              f"{http[1] / http_base:.2f} | {http[2] / 1024:.1f} MiB |")
    finally:
        s.stop_all()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
