"""Erasure of one address (issue 12), through nginx: DELETE /v1/recipients
removes every record, event and queued message of the address for the
caller's tenant and answers with counts; then a raw scan of every key and
value in Redis and every document in the store finds neither the address,
nor its recipient key (but in the suppression entry kept, unless dropped),
nor any ciphertext that held it. Other recipients and tenants keep theirs."""
import base64
import os
import subprocess
import time
import uuid

import bson
import pymongo
import pytest
import redis as redislib
import requests

import stack as stackmod
from conftest import message, tenants_stack
from test_suppression import rkey


@pytest.fixture
def erasing(tmp_path):
    def keys(s):
        keys.eraser = s.add_key("eraser", "acme", "erase").token()
        keys.hooks = s.add_key("hooks", "acme", "webhooks").token()
    s, tokens, api = tenants_stack(tmp_path, ("acme", "globex"), before_nginx=keys)
    # a webhook endpoint that is down: its deliveries (whose payloads name
    # the recipients) wait in Redis for a retry an hour later
    closed = stackmod.free_port()
    r = requests.post(api.base + "/v1/webhooks", json={"url": f"http://127.0.0.1:{closed}/hook"}, timeout=10,
                      headers={"Authorization": "Bearer " + keys.hooks})
    assert r.status_code == 201, r.text
    s.start_deliveryd(webhook_allow_private="1", webhook_retry_schedule="3600", webhook_timeout="2")
    yield s, tokens, api, keys.eraser
    s.stop_all()


def webhook_retries(s):
    r = redislib.Redis(port=s.redis.port)
    return [m.split(b"\n")[1].decode()[:30] for m in r.zrange("mailapi:messages:whretry", 0, -1)]


def erase(api, token, body):
    return requests.delete(api.base + "/v1/recipients", json=body, timeout=60,
                           headers={"Authorization": "Bearer " + token})


def redis_dump(s):
    """Every key and value in Redis, as bytes."""
    r = redislib.Redis(port=s.redis.port)
    out = []
    for key in r.scan_iter(count=1000):
        out.append(key)
        t = r.type(key)
        if t == b"string":
            out.append(r.get(key) or b"")
        elif t == b"hash":
            for k, v in r.hgetall(key).items():
                out += [k, v]
        elif t == b"list":
            out += r.lrange(key, 0, -1)
        elif t == b"set":
            out += list(r.smembers(key))
        elif t == b"zset":
            out += [m for m, _ in r.zrange(key, 0, -1, withscores=True)]
        elif t == b"stream":
            for entry_id, fields in r.xrange(key):
                out.append(entry_id)
                for k, v in fields.items():
                    out += [k, v]
    return b"\n".join(out)


def store_dump(s):
    """Every document of every collection in the store, as BSON bytes."""
    db = pymongo.MongoClient(s.mongodb_uri)["mailapi"]
    return b"".join(bson.encode(d) for name in db.list_collection_names() for d in db[name].find())


def ciphertexts(s, ids):
    """What the store and Redis hold sealed of these messages."""
    db = pymongo.MongoClient(s.mongodb_uri)["mailapi"]
    r = redislib.Redis(port=s.redis.port)
    out = []
    for d in db["messages"].find({"m": {"$in": ids}}):
        for f in ("summary", "envelope"):
            if f in d:
                out.append(bytes(d[f]))
    for mid in ids:
        env = r.hget(f"mailapi:messages:{mid}", "env")
        if env:
            out.append(env)
    return out


def documents_of(s, ids):
    return pymongo.MongoClient(s.mongodb_uri)["mailapi"]["messages"].count_documents({"m": {"$in": ids}})


def test_erasure_leaves_nothing_of_the_address(erasing):
    s, tokens, api, eraser = erasing
    token = tokens["acme"]
    victim = f"victim-{uuid.uuid4().hex[:8]}@example.org"
    other = f"other-{uuid.uuid4().hex[:8]}@example.org"
    big = "x" * (70 * 1024)  # its envelope has a body document of its own
    sent = [api.send(message(victim), token).json()["id"],
            api.send(message(other, cc=[victim]), token).json()["id"],
            api.send(message(victim, text=big), token).json()["id"]]
    kept = api.send(message(other), token).json()["id"]
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    scheduled = api.send(message(victim, send_at=later), token).json()["id"]
    theirs = api.send(message(victim), tokens["globex"]).json()["id"]
    for mid in sent + [kept]:
        api.wait_status(mid, token, "sent")
    api.wait_status(theirs, tokens["globex"], "sent")
    api.wait_status(scheduled, token, "scheduled")
    deadline = time.time() + 20
    while len(webhook_retries(s)) < 8:  # queued and sent of each of acme's 4 messages
        assert time.time() < deadline, webhook_retries(s)
        time.sleep(0.1)
    waiting = sum(1 for m in webhook_retries(s) if m in sent)
    assert waiting == 6
    sealed = ciphertexts(s, sent + [scheduled])
    assert len(sealed) >= 7  # 3 summaries, 3 envelopes (one in its body document), the queued envelope
    docs = documents_of(s, sent)
    key = rkey(s, "acme", victim)
    assert key.encode() in store_dump(s) and any(c in redis_dump(s) for c in sealed)  # the scan finds them

    r = erase(api, eraser, {"address": victim.upper()})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got == {"messages": 3, "documents": docs, "queued": 1, "events": 0, "webhook_deliveries": 6,
                   "suppression": "kept", "done": True}, got
    assert sorted(webhook_retries(s)) == [kept, kept]  # the other recipient's message's deliveries stay

    for mid in sent + [scheduled]:
        assert api.get(mid, token).status_code == 404, mid
    assert api.list(victim, token).json()["messages"] == []
    assert [m["id"] for m in api.list(other, token).json()["messages"]] == [kept]
    assert api.get(theirs, tokens["globex"]).status_code == 200  # another tenant's: untouched
    assert [m["id"] for m in api.list(victim, tokens["globex"]).json()["messages"]] == [theirs]

    rd, st = redis_dump(s), store_dump(s)
    for c in sealed:
        assert c not in rd and c not in st
    assert victim.encode() not in rd and victim.encode() not in st
    # its key is left in one place only: the suppression entry, with no sealed address
    supp = redislib.Redis(port=s.redis.port).hgetall("mailapi:messages:supp:acme")
    assert list(supp) == [key.encode()] and supp[key.encode()].endswith(b" erased -")
    assert rd.count(key.encode()) == 2  # the hash field and the time index's member
    assert key.encode() not in st
    listed = requests.get(api.base + "/v1/suppressions", headers={"Authorization": "Bearer " + token},
                          timeout=10).json()["suppressions"]
    assert [(e["email"], e["reason"]) for e in listed] == [(None, "erased")]

    # not mailed again by accident
    again = api.send(message(victim), token).json()["id"]
    api.wait_status(again, token, "suppressed")
    # and dropped too: then nothing at all is left of it
    r = erase(api, eraser, {"address": victim, "suppression": "drop"})
    assert r.status_code == 200 and r.json()["messages"] == 1 and r.json()["suppression"] == "dropped", r.text
    rd, st = redis_dump(s), store_dump(s)
    assert key.encode() not in rd and key.encode() not in st and victim.encode() not in rd + st
    assert api.get(again, token).status_code == 404


def test_erasure_needs_its_scope_and_a_clear_request(erasing):
    s, tokens, api, eraser = erasing
    victim = f"victim-{uuid.uuid4().hex[:8]}@example.org"
    mid = api.send(message(victim), tokens["acme"]).json()["id"]
    api.wait_status(mid, tokens["acme"], "sent")
    r = erase(api, tokens["acme"], {"address": victim})  # send+read: not enough
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    for body, status, code in [({"address": "nope"}, 422, "invalid_address"),
                               ({}, 422, "invalid_address"),
                               ({"address": victim, "suppression": "forget"}, 422, "invalid_value"),
                               ({"address": victim, "everything": True}, 400, "unknown_field")]:
        r = erase(api, eraser, body)
        assert r.status_code == status and r.json()["error"]["code"] == code, (body, r.text)
    r = requests.delete(api.base + "/v1/recipients/" + victim, headers={"Authorization": "Bearer " + eraser},
                        timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "use_body"
    assert api.get(mid, tokens["acme"]).status_code == 200  # nothing changed
    # an address nobody wrote to: nothing to erase, and it is suppressed from now on
    r = erase(api, eraser, {"address": "stranger@example.org"})
    assert r.json()["messages"] == 0 and r.json()["done"] is True


def test_erasure_leaves_no_dead_letter_nor_idempotency_key(erasing):
    """A message given up waits in the dead letters with the last refusal,
    which names the address as many servers do (redacted, but its dead
    letter still points at the message); an idempotency key is the
    tenant's own string, often built from the address. Neither may outlive
    the erasure, and a replay of the dead letters sends nothing to it."""
    s, tokens, api, eraser = erasing
    token = tokens["acme"]
    victim = f"tempecho+{uuid.uuid4().hex[:8]}@example.org"
    other = f"tempecho+{uuid.uuid4().hex[:8]}@example.org"
    mid = api.send(message(victim), token, headers={"Idempotency-Key": "welcome-" + victim}).json()["id"]
    kept = api.send(message(other), token, headers={"Idempotency-Key": "welcome-" + other}).json()["id"]
    api.wait_status(mid, token, "failed", timeout=40)  # max_attempts 4, retry_base 1 s: dead
    api.wait_status(kept, token, "failed", timeout=40)
    r = redislib.Redis(port=s.redis.port)
    deadline = time.time() + 10
    while len(r.xrange("mailapi:dead")) < 2:
        assert time.time() < deadline, r.xrange("mailapi:dead")
        time.sleep(0.1)
    assert victim.encode() in redis_dump(s)  # its idempotency key names it (the refusal is redacted)

    got = erase(api, eraser, {"address": victim})
    assert got.status_code == 200 and got.json()["done"] is True, got.text
    rd = redis_dump(s)
    assert victim.encode() not in rd, [line for line in rd.split(b"\n") if victim.encode() in line]
    dead = [f[b"id"].decode() for _, f in r.xrange("mailapi:dead")]
    assert dead == [kept]  # the other recipient's dead letter stays
    assert r.exists("mailapi:idem:acme:welcome-" + other)
    out = subprocess.run([stackmod.DELIVERYD, "-c", os.path.join(s.dir, "deliveryd.conf"), "--replay-dead"],
                         capture_output=True, text=True, env=s.sanitizer_env(preload=False))
    assert out.returncode == 0, out.stderr
    assert not r.exists(f"mailapi:messages:{mid}") and api.get(mid, token).status_code == 404

    # the same request again is a new message (suppressed), not the erased one
    again = api.send(message(victim), token, headers={"Idempotency-Key": "welcome-" + victim})
    assert again.status_code == 202 and again.json()["id"] != mid, again.text
    api.wait_status(again.json()["id"], token, "suppressed")


def test_erasures_do_not_take_every_thread(erasing):
    """An erasure may wait 30 s for a message being sent; however many are
    asked for at once, reads keep their threads."""
    s, tokens, api, eraser = erasing
    token = tokens["acme"]
    victim = f"victim-{uuid.uuid4().hex[:8]}@example.org"
    read = api.send(message(f"other-{uuid.uuid4().hex[:8]}@example.org"), token).json()["id"]
    api.wait_status(read, token, "sent")
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    held = api.send(message(victim, send_at=later), token).json()["id"]
    api.wait_status(held, token, "scheduled")
    r = redislib.Redis(port=s.redis.port)  # as a deliveryd sending it: a live lease for 10 minutes
    now_ms = int(r.time()[0]) * 1000
    r.hset(f"mailapi:messages:{held}", mapping={"owner": "someone", "lease": str(now_ms + 600000)})

    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        erasures = [pool.submit(erase, api, eraser, {"address": victim}) for _ in range(40)]
        time.sleep(2)  # all of them in nginx
        t0 = time.time()
        got = requests.get(api.base + "/v1/messages/" + read, headers={"Authorization": "Bearer " + token},
                           timeout=60)
        took = time.time() - t0
        assert got.status_code == 200 and took < 5, (got.status_code, took)
        answers = [f.result() for f in erasures]
    refused = [a for a in answers if a.status_code == 429]
    waited = [a for a in answers if a.status_code == 200]
    assert refused and len(refused) + len(waited) == 40, [(a.status_code, a.text) for a in answers]
    assert all(a.json()["error"]["code"] == "erasure_busy" and a.headers.get("Retry-After") for a in refused)
    assert all(a.json()["done"] is False for a in waited)  # the held message is still being sent


def test_erasure_answers_across_a_reload(erasing):
    """nginx reloaded while an erasure waits for a message being sent: the
    old worker stays until it has answered."""
    import concurrent.futures
    import signal
    s, tokens, api, eraser = erasing
    token = tokens["acme"]
    victim = f"victim-{uuid.uuid4().hex[:8]}@example.org"
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    held = api.send(message(victim, send_at=later), token).json()["id"]
    api.wait_status(held, token, "scheduled")
    r = redislib.Redis(port=s.redis.port)  # being sent for 4 more seconds
    now_ms = int(r.time()[0]) * 1000
    r.hset(f"mailapi:messages:{held}", mapping={"owner": "someone", "lease": str(now_ms + 4000)})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(erase, api, eraser, {"address": victim})
        time.sleep(1)
        s.nginx.send_signal(signal.SIGHUP)
        got = pending.result()
    assert got.status_code == 200 and got.json()["queued"] == 1 and got.json()["done"] is True, got.text
    assert not r.exists(f"mailapi:messages:{held}")


def test_erasure_finds_messages_queued_before_the_upgrade(erasing):
    """A message queued by a module older than erasure has no `rk` in its
    hash: it is found by opening its envelope, not left to be mailed (and
    recorded, summary and all) when it is due."""
    s, tokens, api, eraser = erasing
    token = tokens["acme"]
    victim = f"victim-{uuid.uuid4().hex[:8]}@example.org"
    other = f"other-{uuid.uuid4().hex[:8]}@example.org"
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    old = api.send(message(other, bcc=[victim], send_at=later), token).json()["id"]
    theirs = api.send(message(other, send_at=later), token).json()["id"]
    globex = api.send(message(victim, send_at=later), tokens["globex"]).json()["id"]
    r = redislib.Redis(port=s.redis.port)
    for mid in (old, theirs, globex):
        assert r.hdel(f"mailapi:messages:{mid}", "rk") == 1  # as an older module wrote it
    got = erase(api, eraser, {"address": victim})
    assert got.status_code == 200 and got.json()["queued"] == 1, got.text
    assert not r.exists(f"mailapi:messages:{old}")
    assert r.zscore("mailapi:scheduled", old) is None
    assert r.exists(f"mailapi:messages:{theirs}") and r.exists(f"mailapi:messages:{globex}")
    assert api.get(old, token).status_code == 404
    assert api.get(theirs, token).json()["status"] == "scheduled"
