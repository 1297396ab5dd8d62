"""Edge benchmark: accepted sends per second through nginx + ngx_mail_api_module
(validate, encrypt, XADD to a real Redis, 202 after Redis acked) against
`return 202` from the same nginx build, same worker count, same run.

usage: bench/edge.py [seconds per case, default 10]
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "t"))
import stack as stackmod  # noqa: E402

SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
CONNECTIONS = 32
MEMORY_REQUESTS = int(os.environ.get("BENCH_MEMORY_REQUESTS", "1000000"))

LUA = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
"""


def wrk(url, script, seconds=None):
    out = subprocess.run(["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds or SECONDS}s", "--latency", "-s", script, url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, pct(50), pct(99), int(non2xx.group(1)) if non2xx else 0


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def main():
    if not shutil.which("wrk"):
        sys.exit("bench: wrk is missing: run ./build.sh deps")
    d = tempfile.mkdtemp(prefix="mailapi-bench-")
    s = stackmod.Stack(d)
    key = s.add_key("bench", "bench", "send")
    try:
        print(f"==> starting redis, FerretDB and nginx (1 worker) in {d}", flush=True)
        s.start_redis()
        s.start_ferretdb()
        nginx = s.start_nginx(workers=1, log_level="warn")
        text = "x" * 700
        body = json.dumps({"from": "bench@example.com", "to": ["rcpt@example.org"], "subject": "bench",
                           "text": text})
        body = json.dumps({"from": "bench@example.com", "to": ["rcpt@example.org"], "subject": "bench",
                           "text": text + "y" * (1024 - len(body))})
        script = os.path.join(d, "post.lua")
        with open(script, "w") as f:
            f.write(LUA.format(body=json.dumps(body), token=key.token(ttl=86400)))
        worker = int(subprocess.run(["pgrep", "-P", str(nginx.popen.pid)], capture_output=True,
                                    text=True).stdout.split()[0])
        base = f"http://127.0.0.1:{nginx.port}"
        print(f"==> wrk: {SECONDS}s per case, {CONNECTIONS} connections, body {len(body)} bytes", flush=True)
        b = wrk(base + "/baseline", script)
        m = wrk(base + "/v1/messages", script)

        # Memory: worker RSS across MEMORY_REQUESTS sends, after a warm-up
        # (the send run above). The stream is trimmed meanwhile: this measures
        # nginx, not Redis.
        stop = threading.Event()
        def trim():
            while not stop.wait(1):
                subprocess.run(["redis-cli", "-p", str(s.redis.port), "XTRIM", "mailapi:messages", "MAXLEN", "~",
                                "10000"], capture_output=True)
        trimmer = threading.Thread(target=trim)
        trimmer.start()
        rss0 = rss_kib(worker)
        seconds = max(5, int(MEMORY_REQUESTS / m[0] * 1.1) + 1)
        print(f"==> memory: about {MEMORY_REQUESTS:,} sends over {seconds}s", flush=True)
        mem = wrk(base + "/v1/messages", script, seconds)
        rss1 = rss_kib(worker)
        stop.set()
        trimmer.join()

        print()
        print("| case | req/s | p50 ms | p99 ms | non-2xx | ratio |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, (rps, p50, p99, bad), ratio in (("return 202 (baseline)", b, 1.0),
                                                  ("POST /v1/messages", m, m[0] / b[0])):
            print(f"| {name} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {bad} | {ratio:.2f} |")
        print()
        print("| memory | requests | worker RSS before | after | growth |")
        print("|---|---:|---:|---:|---:|")
        print(f"| POST /v1/messages | {mem[0] * seconds:,.0f} | {rss0 / 1024:.1f} MiB | {rss1 / 1024:.1f} MiB | "
              f"{(rss1 - rss0) / 1024:.2f} MiB |")
    finally:
        s.stop_all()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
