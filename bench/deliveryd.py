"""deliveryd benchmark: messages per second end to end (stream -> SMTP ->
MongoDB record -> ack) and peak RSS, for N messages queued through nginx
before deliveryd starts. Baseline in the same run: the same SMTP server fed
directly by N parallel smtplib clients (what the SMTP server can take).

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
    subprocess.run(["wrk", "-t1", "-c4", "-d120s", "-s", script, f"http://127.0.0.1:{s.nginx.port}/v1/messages"],
                   capture_output=True, check=True)
    return int(subprocess.run(["redis-cli", "-p", str(s.redis.port), "XLEN", "mailapi:messages"],
                              capture_output=True, text=True).stdout.strip())


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


def main():
    d = tempfile.mkdtemp(prefix="deliveryd-bench-")
    s = stackmod.Stack(d)
    key = s.add_key("bench", "bench", "send")
    try:
        print(f"==> starting redis, FerretDB, SMTP server and nginx in {d}", flush=True)
        s.start_redis()
        s.start_ferretdb()
        s.start_smtp()
        s.start_nginx(log_level="warn")
        print(f"==> queueing {N:,} messages through nginx", flush=True)
        queued = fill(s, key, N)
        print(f"==> baseline: the SMTP server fed directly ({min(N, 5000):,} messages)", flush=True)
        base = smtp_baseline(s.smtp.port, min(N, 5000))
        print(f"==> deliveryd draining {queued:,} messages", flush=True)
        coll = pymongo.MongoClient(s.mongodb_uri)["mailapi"]["messages"]
        t0 = time.time()
        dd = s.start_deliveryd(max_in_flight="512", batch="256")
        peak = 0
        while True:
            peak = max(peak, rss_kib(dd.popen.pid))
            done = coll.count_documents({"status": "sent"})
            if done >= queued:
                break
            if time.time() - t0 > 600:
                raise SystemExit(f"bench: only {done}/{queued} sent after 600 s")
            time.sleep(1)
        rate = queued / (time.time() - t0)
        print()
        print("| case | messages | msg/s | ratio | peak RSS |")
        print("|---|---:|---:|---:|---:|")
        print(f"| SMTP server fed directly (baseline) | {min(N, 5000):,} | {base:,.0f} | 1.00 | |")
        print(f"| deliveryd: stream -> SMTP -> record -> ack | {queued:,} | {rate:,.0f} | {rate / base:.2f} | "
              f"{peak / 1024:.1f} MiB |")
    finally:
        s.stop_all()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
