"""A/B of two builds of the module: the same send case through two nginx
(one worker each, the same Redis and store), alternating A/B/B/A..., with
the median ratio of the pairs and its spread. For a change to the send
path: build the module before and after, copy each .so aside, compare.

usage: bench/ab_module.py A.so B.so [pairs, default 6] [seconds, 3] [connections, 32]
env:   AB_CFG=<redis setting>,<value for A>,<value for B>: the same build,
       two Redis settings (e.g. AB_CFG=hash-max-listpack-value,64,4096)
"""
import json
import os
import statistics
import sys
import tempfile

import redis as redislib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "t"))
sys.path.insert(0, HERE)
_argv, sys.argv = sys.argv, sys.argv[:1]
import edge  # noqa: E402  (reads sys.argv when imported)
sys.argv = _argv
import stack as stackmod  # noqa: E402


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    builds = sys.argv[1:3]
    pairs = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    seconds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    conns = int(sys.argv[5]) if len(sys.argv) > 5 else 32
    for b in builds:
        if not os.path.exists(b):
            sys.exit(f"ab_module: {b} does not exist: build the module and copy its .so there")
    d = tempfile.mkdtemp(prefix="mailapi-ab-")
    s = stackmod.Stack(d)
    others, cases = [], []
    try:
        s.start_redis()
        s.start_ferretdb()
        r = redislib.Redis(port=s.redis.port)
        redis_pid = int(r.info("server")["process_id"])
        body = edge.message_body()
        for i, so in enumerate(builds):
            st = s if i == 0 else stackmod.Stack(os.path.join(d, f"b{i}"))
            if i:
                st.redis, st.mongo = s.redis, s.mongo
                others.append(st)
            key = st.add_key("bench", "bench", "send")
            stackmod.MODULE = so
            ng = st.start_nginx(name=f"nginx{i}", workers=1, log_level="warn", access_log=False)
            edge.WORKERS = 1
            script = os.path.join(d, f"post{i}.lua")
            with open(script, "w") as f:
                f.write(edge.POST.format(body=json.dumps(body), token=key.token(ttl=86400)))
            cases.append((f"http://127.0.0.1:{ng.port}/v1/messages", script,
                          {"nginx": edge.workers_of(ng), "redis": redis_pid}))
        for url, script, pids in cases:  # warm-up
            edge.wrk(url, script, 2, pids, connections=conns)
            edge.empty_redis(r)
        cfg = os.environ.get("AB_CFG", "")
        res = {0: [], 1: []}
        for i in range(pairs):
            for v in (0, 1) if i % 2 == 0 else (1, 0):
                if cfg:
                    name, a, b = cfg.split(",")
                    r.config_set(name, b if v else a)
                url, script, pids = cases[v]
                execs = edge.exec_calls(r)
                m = edge.wrk(url, script, seconds, pids, connections=conns)
                m.per_exec = r.xlen(edge.STREAM) / max(1, edge.exec_calls(r) - execs)
                edge.check_queued(r, m, f"build {'AB'[v]}")
                edge.empty_redis(r)
                res[v].append(m)
                print(f"pair {i + 1} {'AB'[v]}: {m.rps:9,.0f}/s  p99 {m.p99:.2f} ms  nginx "
                      f"{m.us_per_request('nginx'):.1f} µs  redis {m.us_per_request('redis'):.1f} µs  "
                      f"sends per EXEC {m.per_exec:.1f}  non-2xx/errors {m.bad}", flush=True)
        bad = sum(m.bad for v in res for m in res[v])
        ratios = [b.rps / a.rps for a, b in zip(res[0], res[1])]
        print()
        print("| build | req/s (median) | nginx µs per send | redis µs per send | sends per EXEC |")
        print("|---|---:|---:|---:|---:|")
        for v, so in enumerate(builds):
            rs = res[v]
            print(f"| {'AB'[v]}: {so} | {statistics.median(x.rps for x in rs):,.0f} | "
                  f"{statistics.median(x.us_per_request('nginx') for x in rs):.1f} | "
                  f"{statistics.median(x.us_per_request('redis') for x in rs):.1f} | "
                  f"{statistics.median(x.per_exec for x in rs):.1f} |")
        print(f"\nB / A: median {statistics.median(ratios):.3f}, spread {min(ratios):.3f}-{max(ratios):.3f} "
              f"({pairs} pairs, {conns} connections)")
        if bad:
            print(f"\nINVALID RUN (discard these figures): {bad} non-2xx answers or socket errors")
            sys.exit(1)
    finally:
        for st in others:
            st.stop_all()
        s.stop_all()


if __name__ == "__main__":
    main()
