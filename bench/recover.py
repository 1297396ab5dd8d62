"""Recover benchmark: a page of 50 of a recipient's messages through nginx
(POST /v1/messages/search: the bucket walk, decryption, JSON) against the
same lookups run on the store directly with pymongo (no decryption), in
stores of 10,000 and 200,000 records holding a year of traffic.

The records are written straight into the store in the shape deliveryd
writes (t/records.py), spread over the last 365 days:
  store 1:  10,000 records: A has 1,000, B 9,000
  store 2: 200,000 records: store 1, 1,000 more for B (10,000), 189,000 to
           others (one or a few each)
For each store and recipient, the first page and the tenth (by its cursor)
are each read R times through nginx and R times directly, interleaved
(API, store, API, store, ...), after one warm-up read that lets the module
write its hints. Any answer other than 200 invalidates the run.

usage: bench/recover.py [R requests per measurement, default 200]
"""
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "t"))
import pymongo  # noqa: E402

import records  # noqa: E402
import stack as stackmod  # noqa: E402

R = int(sys.argv[1]) if len(sys.argv) > 1 else 200
LIMIT = 50
YEAR_MS = 365 * 86400000


def say(msg):
    print(f"==> {msg}", flush=True)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Filler:
    def __init__(self, s, tenant):
        self.ring = records.Keyring(os.path.join(s.dir, "keyring"))
        self.uri, self.tenant = s.mongodb_uri, tenant
        self.now = int(time.time() * 1000)

    def docs(self, rcpt, n):
        for _ in range(n):
            created = self.now - random.randint(60000, YEAR_MS)
            mid = records.message_id(created)
            body = json.dumps({"from": "shop@example.com", "to": [rcpt], "subject": f"Order {mid[-8:]}",
                               "text": "Thank you for your order. " * 30}).encode()
            yield from records.message_documents(self.ring, self.tenant, mid, created, body, [rcpt])

    def fill(self, plan):
        """plan: [(recipient, count)], written by two threads, 1,000 a batch."""
        batches, batch = [], []
        for rcpt, n in plan:
            for d in self.docs(rcpt, n):
                batch.append(d)
                if len(batch) == 1000:
                    batches.append(batch)
                    batch = []
        if batch:
            batches.append(batch)
        total, done, lock = sum(len(b) for b in batches), [0], threading.Lock()
        t0 = time.time()

        def work(part):
            coll = pymongo.MongoClient(self.uri)["mailapi"]["messages"]
            for b in part:
                coll.insert_many(b, ordered=False)
                with lock:
                    done[0] += len(b)
                    if done[0] % 20000 < 1000:
                        print(f"    {done[0]:,}/{total:,} records", flush=True)
        threads = [threading.Thread(target=work, args=(batches[i::2],)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        say(f"wrote {total:,} records in {time.time() - t0:.1f} s")


def search(base, token, rcpt, cursor=None):
    body = {"recipient": rcpt, "limit": LIMIT}
    if cursor:
        body["cursor"] = cursor
    req = urllib.request.Request(base + "/v1/messages/search", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, None


def cursor_at(base, token, rcpt, page):
    cursor = None
    for _ in range(page - 1):
        status, body = search(base, token, rcpt, cursor)
        assert status == 200, status
        cursor = body["next_cursor"]
    return cursor


def measure(s, base, token, db, rcpt, rkey, cursor):
    """R interleaved pairs; returns API and store latencies (ms), the page's
    documents and lookups, and the error count."""
    import base64
    raw_cursor = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode() if cursor else None
    search(base, token, rcpt, cursor)  # warm-up: the module's hints
    api, direct, errors = [], [], 0
    docs = lookups = 0
    for i in range(R):
        t0 = time.perf_counter()
        status, body = search(base, token, rcpt, cursor)
        api.append((time.perf_counter() - t0) * 1000)
        errors += status != 200
        t0 = time.perf_counter()
        ids, docs, lookups = records.page_queries(db, "bench", rkey, LIMIT, int(time.time() * 1000), raw_cursor)
        direct.append((time.perf_counter() - t0) * 1000)
        if i == 0 and status == 200:
            got = [m["id"] for m in body["messages"]]
            if got != ids:
                raise SystemExit(f"bench: the API and the direct lookups disagree on {rcpt}'s page")
    return api, direct, docs, lookups, errors


def main():
    d = tempfile.mkdtemp(prefix="recover-bench-")
    s = stackmod.Stack(d)
    key = s.add_key("bench", "bench", "read")
    rows, invalid = [], []
    try:
        say(f"starting redis, PostgreSQL + FerretDB and nginx in {d}")
        s.start_redis()
        s.start_ferretdb()
        s.start_nginx(log_level="warn")
        base, token = f"http://127.0.0.1:{s.nginx.port}", key.token(ttl=86400)
        db = pymongo.MongoClient(s.mongodb_uri)["mailapi"]
        filler = Filler(s, "bench")
        A, B = "a.customer@example.org", "b.busy@example.org"
        stores = [("10,000", [(A, 1000), (B, 9000)]),
                  ("200,000", [(B, 1000)] + [(f"c{i}@example.net", 1 + i % 3) for i in range(94500)])]
        have = {A: 0, B: 0}
        for size, plan in stores:
            say(f"filling the store to {size} records")
            filler.fill(plan)
            for rcpt, n in plan:
                if rcpt in have:
                    have[rcpt] += n
            total = db["messages"].estimated_document_count()
            for rcpt in (A, B):
                rkey = filler.ring.recipient_key("bench", rcpt)
                for page in (1, 10):
                    cursor = cursor_at(base, token, rcpt, page)
                    say(f"store of {total:,}: {rcpt.split('@')[0]} ({have[rcpt]:,} records), page {page}: "
                        f"{R} x (API, store)")
                    api, direct, docs, lookups, errors = measure(s, base, token, db, rcpt, rkey, cursor)
                    if errors:
                        invalid.append(f"{errors} non-200 answers for {rcpt} page {page} in the store of {total:,}")
                    rows.append((f"{total:,}", f"{have[rcpt]:,}", page, statistics.median(api), pct(api, 99),
                                 statistics.median(direct), pct(direct, 99), docs, lookups))
    except BaseException:
        s.stop_all()
        print(f"bench: failed; the stack directory {d} is kept", file=sys.stderr)
        raise
    s.stop_all()
    shutil.rmtree(d, ignore_errors=True)
    print()
    print(f"| records in store | recipient's records | page of {LIMIT} | API p50 ms | API p99 ms | "
          "store p50 ms | store p99 ms | API / store (p50) | documents read | lookups |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for store, mine, page, ap50, ap99, sp50, sp99, docs, lookups in rows:
        print(f"| {store} | {mine} | {page} | {ap50:.2f} | {ap99:.2f} | {sp50:.2f} | {sp99:.2f} | "
              f"{ap50 / sp50:.2f} | {docs} | {lookups} |")
    print()
    print(f"API: POST /v1/messages/search through nginx (one worker, one connection, {R} requests a row); "
          "store: the same lookups with pymongo, no decryption, interleaved with them.")
    if invalid:
        print("INVALID RUN: " + "; ".join(invalid))
        sys.exit(1)


if __name__ == "__main__":
    main()
