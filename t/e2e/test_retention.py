"""Retention per tenant (retention=Nd in the keys file): deliveryd's sweeper
deletes a message's records, and everything of it, once its tenant's
retention has run out, at most retention_batch messages a run, one instance
at a time; another tenant's records stay exactly as they were. The clock is
moved with deliveryd's retention_clock_offset (seconds added to its clock
where retention asks the time)."""
import datetime
import json
import os
import subprocess
import time

import pymongo
import pytest
import requests

import records
import stack as stackmod
from conftest import Api, message

DAY = 86400
DAY_MS = DAY * 1000


@pytest.fixture(scope="module")
def ret(tmp_path_factory):
    s = stackmod.Stack(str(tmp_path_factory.mktemp("retention")))
    short = s.add_key("short_full", "short", "send+read", "retention=1d")
    # no option of its own: the tenant's shortest (1 day) holds for it too
    s.add_key("short_other", "short", "send", "")
    s.add_key("short_long", "short", "send", "retention=30d")
    forever = s.add_key("forever_full", "forever", "send+read")
    try:
        s.start_redis()
        s.start_ferretdb()
        s.start_smtp()
        s.start_nginx()
    except Exception:
        print(s.failure_report())
        s.stop_all()
        raise
    s.api = Api(f"http://127.0.0.1:{s.nginx.port}")
    s.short, s.forever = short, forever
    s.db = pymongo.MongoClient(s.mongodb_uri, serverSelectionTimeoutMS=5000)["mailapi"]
    yield s
    s.stop_all()


def redis(s, *args):
    return subprocess.run(["redis-cli", "-p", str(s.redis.port), *args], capture_output=True, text=True,
                          timeout=10).stdout.strip()


def docs_of(s, ids):
    """Every document of these messages, by _id, envelopes and all."""
    return {d["_id"]: d for d in s.db["messages"].find({"m": {"$in": list(ids)}})}


def sweeps(proc):
    """The sweeper's log lines of one deliveryd: [(messages, documents)]."""
    out = []
    with open(proc.log, "rb") as f:
        for line in f:
            try:
                o = json.loads(line)
            except ValueError:
                continue
            if o.get("msg", "").startswith("retention sweep"):
                out.append(o)
    return out


def metrics(proc):
    text = requests.get(proc.admin + "/metrics", timeout=5).text
    out = {}
    for line in text.splitlines():
        if line.startswith("deliveryd_retention_"):
            name, value = line.split()
            out[name[len("deliveryd_retention_"):-len("_total")]] = int(value)
    return out


def start(s, name, **settings):
    conf = dict(retention_sweep_every=1, retention_batch=1000, retention_clock_offset=0)
    conf.update(settings)
    return s.start_deliveryd(name=name, **conf)


def wait_for(what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = what()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what.__name__ if hasattr(what, '__name__') else what}")


def test_a_tenants_records_go_after_its_retention_and_others_stay(ret):
    s, api = ret, ret.api
    redis(s, "DEL", "mailapi:messages:retention:cursor")
    short, forever = s.short.token(), s.forever.token()
    big = "x" * (100 * 1024)  # an envelope over 64 KiB: a body document of its own
    sent = {"short": [], "forever": []}
    rcpts = {"short": [], "forever": []}
    for tenant, token in (("short", short), ("forever", forever)):
        for i, text in enumerate(("small one", "small two", big)):
            rcpt = f"{tenant}-{i}-{os.urandom(4).hex()}@example.org"
            r = api.send(message(rcpt, text=text), token)
            assert r.status_code == 202, r.text
            sent[tenant].append(r.json()["id"])
            rcpts[tenant].append(rcpt)
    # another key of the tenant, without an option of its own, stamps the same
    other = s.keys[1].token(scopes="send")
    r = api.send(message(f"short-other-{os.urandom(4).hex()}@example.org"), other)
    assert r.status_code == 202, r.text
    sent["short"].append(r.json()["id"])
    # the module stamps the tenant's retention (the shortest of its keys) on each message
    for mid in sent["short"]:
        assert redis(s, "HGET", "mailapi:messages:" + mid, "keep") == "1"
    for mid in sent["forever"]:
        assert redis(s, "HGET", "mailapi:messages:" + mid, "keep") == ""
    d = start(s, "deliveryd-a")
    try:
        for tenant, token in (("short", short), ("forever", forever)):
            for mid in sent[tenant]:
                api.wait_status(mid, short if tenant == "short" else forever, "sent", timeout=30)
        short_docs = docs_of(s, sent["short"])
        forever_docs = docs_of(s, sent["forever"])
        # short: message + expiry for each, and the large one's body; every one with expires_at
        assert sorted(short_docs) == sorted([m for m in sent["short"]] + [m + ".x" for m in sent["short"]]
                                            + [sent["short"][2] + ".body"])
        for mid in sent["short"]:
            created = short_docs[mid]["created_at"]
            expires = created + datetime.timedelta(days=1)
            assert short_docs[mid]["expires_at"] == expires
            assert short_docs[mid + ".x"]["expires_at"] == expires
            expires_ms = int(expires.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000)
            assert short_docs[mid + ".x"]["x"] == str(expires_ms // DAY_MS)
        assert short_docs[sent["short"][2] + ".body"]["expires_at"] == short_docs[sent["short"][2]]["expires_at"]
        # forever: no expiry anywhere
        assert sorted(forever_docs) == sorted(sent["forever"] + [sent["forever"][2] + ".body"])
        assert not any("expires_at" in doc for doc in forever_docs.values())
        # the sweeper runs every second, and before the retention ends deletes nothing
        time.sleep(3)
        assert docs_of(s, sent["short"]) == short_docs
        m = metrics(d)
        assert m["sweeps"] >= 2 and m["messages"] == 0 and m["documents"] == 0 and m["failures"] == 0, m
        assert sweeps(d) == []
    finally:
        d.stop()
    # two days on
    d = start(s, "deliveryd-b", retention_clock_offset=2 * DAY)
    try:
        wait_for(lambda: metrics(d)["messages"] == len(sent["short"]))
        time.sleep(2)  # and nothing more than that
        m = metrics(d)
        assert m == {"sweeps": m["sweeps"], "messages": 4, "documents": len(short_docs), "failures": 0}, m
        lines = sweeps(d)
        assert [(l["messages"], l["documents"], l["level"]) for l in lines] == [("4", str(len(short_docs)), "info")]
        # nothing of the short tenant's messages is left: messages, bodies, events, expiry documents
        assert docs_of(s, sent["short"]) == {}
        assert s.db["messages"].count_documents({"tenant": "short"}) == 0
        for mid in sent["short"]:
            r = api.get(mid, short)
            assert r.status_code == 404, r.text
        for rcpt in rcpts["short"]:
            r = api.list(rcpt, short)
            assert r.status_code == 200 and r.json()["messages"] == [], r.text
        # the other tenant's are exactly as they were, and read back whole
        assert docs_of(s, sent["forever"]) == forever_docs
        for mid, rcpt in zip(sent["forever"], rcpts["forever"]):
            r = api.get(mid, forever)
            assert r.status_code == 200 and r.json()["status"] == "sent", r.text
            page = api.list(rcpt, forever).json()["messages"]
            assert [p["id"] for p in page] == [mid]
        assert api.get(sent["forever"][2], forever).json()["text"] == big
        # the cursor moved past the days swept, not past today's (by the moved clock)
        assert int(redis(s, "GET", "mailapi:messages:retention:cursor")) == (int(time.time()) + 2 * DAY - 600) // DAY
        assert redis(s, "EXISTS", "mailapi:messages:retention:lock") == "0"
    finally:
        d.stop()


def write_expired(s, tenant, n, expires_ms_of):
    """n messages written straight into the store, as deliveryd writes a
    retained tenant's: returns {id: number of documents}."""
    ring = records.Keyring(os.path.join(s.dir, "keyring"))
    out, docs = {}, []
    now = int(time.time() * 1000)
    for i in range(n):
        created = now - 10 * DAY_MS + i
        mid = records.message_id(created)
        body = json.dumps(message(f"bulk{i}@example.org")).encode()
        ds = records.with_retention(records.message_documents(ring, tenant, mid, created, body,
                                                              [f"bulk{i}@example.org"]), expires_ms_of(i))
        ds.append({"_id": mid + ".g0a1p0", "m": mid, "tenant": tenant, "rk": ds[-1]["rk"], "eid": "g0a1p0",
                   "type": "provider_failed", "at": records.when(created + 10), "expires_at": ds[-1]["expires_at"]})
        docs += ds
        out[mid] = len(ds)
    s.db["messages"].insert_many(docs)
    return out


def test_a_backlog_drains_over_runs_of_at_most_retention_batch(ret):
    s = ret
    redis(s, "DEL", "mailapi:messages:retention:cursor")
    now = int(time.time() * 1000)
    # 25 expired over three days, 4 that expire in 5 days
    expired = write_expired(s, "short", 25, lambda i: now - (1 + i % 3) * DAY_MS - 3600000)
    later = write_expired(s, "short", 4, lambda i: now + 5 * DAY_MS)
    d = start(s, "deliveryd-c", retention_batch=10)
    try:
        wait_for(lambda: metrics(d)["messages"] == 25)
        time.sleep(3)  # more runs: nothing more goes
        lines = sweeps(d)
        assert [int(l["messages"]) for l in lines] == [10, 10, 5]
        assert all(l["level"] == "info" and l["batch"] == "10" for l in lines)
        assert sum(int(l["documents"]) for l in lines) == sum(expired.values()) == 25 * 3
        m = metrics(d)
        assert (m["messages"], m["documents"], m["failures"]) == (25, 75, 0), m
        assert docs_of(s, expired) == {}
        left = docs_of(s, later)
        assert len(left) == sum(later.values()) == 4 * 3
    finally:
        d.stop()
    s.db["messages"].delete_many({"m": {"$in": list(later)}})


def test_two_instances_sweep_one_at_a_time_and_count_once(ret):
    s = ret
    redis(s, "DEL", "mailapi:messages:retention:cursor")
    now = int(time.time() * 1000)
    expired = write_expired(s, "short", 40, lambda i: now - (1 + i % 4) * DAY_MS)
    a = start(s, "deliveryd-d", retention_batch=7)
    b = start(s, "deliveryd-e", retention_batch=7)
    try:
        wait_for(lambda: docs_of(s, expired) == {}, timeout=60)
        time.sleep(2)
        ma, mb = metrics(a), metrics(b)
        assert ma["messages"] + mb["messages"] == 40, (ma, mb)
        assert ma["documents"] + mb["documents"] == sum(expired.values()) == 120, (ma, mb)
        assert ma["failures"] == mb["failures"] == 0, (ma, mb)
        lines = sweeps(a) + sweeps(b)
        assert all(l["level"] == "info" and 1 <= int(l["messages"]) <= 7 for l in lines), lines
        assert sum(int(l["messages"]) for l in lines) == 40
        for p in (a, b):
            with open(p.log) as f:
                assert '"level":"error"' not in f.read()
    finally:
        a.stop()
        b.stop()
