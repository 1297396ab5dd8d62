"""How sends reach Redis: each loop turn's sends in one MULTI/EXEC (one AOF
fsync for all of them), a send with no idempotency key, rate or quota as the
HSET and XADD that ENQUEUE_LUA would make, the others through the script.
Both write the same thing; many at once each get exactly one entry; a
refusal inside the transaction costs only a 503, never half a message."""
import concurrent.futures
import time
import uuid

import redis as redislib
import requests

import stack as stackmod
from conftest import message


def own_stack(path):
    s = stackmod.Stack(str(path))
    keys = {
        "plain": s.add_key("plain", "acme", "send+read"),
        "kept": s.add_key("kept", "keeper", "send+read", "retention=30d"),  # retention is a tenant's
        "rated": s.add_key("rated", "acme", "send+read", "rate=1000/s burst=1000"),
        "quota": s.add_key("quota", "acme", "send+read", "quota=100000/d"),
        "kept-quota": s.add_key("kept-quota", "keeper", "send+read", "quota=100000/d"),
    }
    s.start_redis()
    s.start_ferretdb()
    s.start_nginx()
    return s, {k: v.token(ttl=3600) for k, v in keys.items()}, f"http://127.0.0.1:{s.nginx.port}"


def send(base, token, body, **headers):
    return requests.post(base + "/v1/messages", json=body, timeout=20,
                         headers=dict({"Authorization": "Bearer " + token}, **headers))


def entry_of(r, mid):
    for _, fields in r.xrange("mailapi:messages"):
        if fields[b"id"].decode() == mid:
            return {k.decode(): v for k, v in fields.items()}
    return None


def test_plain_and_scripted_sends_write_the_same_fields(tmp_path):
    s, tokens, base = own_stack(tmp_path)
    try:
        r = redislib.Redis(port=s.redis.port)
        later = int(time.time()) + 3600
        body = message("a@example.org", cc=["b@example.org"], send_at=time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(later)))
        got = {}
        for name, extra in (("plain", {}), ("kept", {}), ("rated", {}), ("quota", {}), ("kept-quota", {}),
                            ("plain-idem", {"Idempotency-Key": uuid.uuid4().hex})):
            token = tokens[name.removesuffix("-idem")]
            res = send(base, token, body, **extra)
            assert res.status_code == 202, res.text
            mid = res.json()["id"]
            h = {k.decode(): v for k, v in r.hgetall(f"mailapi:messages:{mid}").items()}
            e = entry_of(r, mid)
            assert h and e, name
            got[name] = (mid, h, e)
        for name, (mid, h, e) in got.items():
            keep = name.startswith("kept")
            assert set(h) == {"tenant", "created", "send_at", "env", "rk"} | ({"keep"} if keep else set()), (name, h)
            assert set(e) == ({"id", "tenant", "created", "send_at", "attempt", "gen", "size"}
                              | ({"keep"} if keep else set())), (name, e)
            assert e["id"] == mid.encode() and e["tenant"] == h["tenant"] == (b"keeper" if keep else b"acme")
            assert e["created"] == h["created"] and e["send_at"] == h["send_at"] == str(later).encode()
            assert e["attempt"] == b"0" and e["gen"] == b"0" and int(e["size"]) == len(h["env"])
            assert len(h["rk"].split(b" ")) == 2  # to and cc
            if keep:
                assert h["keep"] == e["keep"] == b"30"
        # the same recipients make the same keys, whichever path wrote them
        assert len({h["rk"] for n, (_, h, _) in got.items() if not n.startswith("kept")}) == 1
        assert got["kept"][1]["rk"] == got["kept-quota"][1]["rk"]
    finally:
        s.stop_all()


def test_many_sends_at_once_each_get_one_entry(tmp_path):
    """Sends of several keys and both paths, 64 at a time, land in shared
    transactions: every 202 is exactly one entry and one hash, no other."""
    s, tokens, base = own_stack(tmp_path)
    try:
        r = redislib.Redis(port=s.redis.port)
        names = ["plain", "kept", "rated", "quota"]
        jobs = []
        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            for i in range(800):
                name = names[i % 4]
                extra = {"Idempotency-Key": f"k-{i}"} if i % 8 == 0 else {}
                jobs.append(pool.submit(send, base, tokens[name], message(f"r{i}@example.org"), **extra))
            answers = [j.result() for j in jobs]
        assert [a.status_code for a in answers] == [202] * 800, {a.status_code for a in answers}
        ids = [a.json()["id"] for a in answers]
        assert len(set(ids)) == 800
        entries = [f[b"id"].decode() for _, f in r.xrange("mailapi:messages")]
        assert sorted(entries) == sorted(ids)
        assert sum(1 for _ in r.scan_iter("mailapi:messages:msg_*", count=1000)) == 800
        # more than one send went in one transaction (else this proves nothing)
        stats = r.info("commandstats")
        assert stats["cmdstat_exec"]["calls"] < 800, stats["cmdstat_exec"]
    finally:
        s.stop_all()


def test_a_refused_transaction_is_a_503_and_writes_nothing(tmp_path):
    """Redis out of memory refuses the queued commands: EXEC aborts the lot,
    each send hears 503 queue_unavailable, and no half message (a hash
    without its entry) stays behind; once memory is back, sends work."""
    s, tokens, base = own_stack(tmp_path)
    try:
        r = redislib.Redis(port=s.redis.port)
        assert send(base, tokens["plain"], message("warm@example.org")).status_code == 202
        before_entries = r.xlen("mailapi:messages")
        before_keys = r.dbsize()
        r.config_set("maxmemory", "1")  # below what is used: every write is refused
        try:
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(lambda i: send(base, tokens[["plain", "rated"][i % 2]],
                                                       message(f"o{i}@example.org")), range(32)))
        finally:
            r.config_set("maxmemory", "0")
        assert {a.status_code for a in answers} == {503}, [a.text for a in answers]
        assert all(a.json()["error"]["code"] == "queue_unavailable" for a in answers)
        assert r.xlen("mailapi:messages") == before_entries
        # the rate key may have been written by nothing either: same key count
        assert r.dbsize() == before_keys
        assert send(base, tokens["plain"], message("after@example.org")).status_code == 202
        log = open(s.dir + "/nginx-error.log").read()
        assert "redis refused a queued command: OOM" in log
    finally:
        s.stop_all()
