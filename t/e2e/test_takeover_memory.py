"""A takeover checks the store for an outcome before sending: that check
reads a message's events, not its envelope, so taking over many large
messages stays within max_in_flight_bytes."""
import base64
import json
import os
import subprocess
import time

import pymongo
import pytest

import records
import stack as stackmod
from conftest import message, private_stack
from test_delivery import rcpt_with


@pytest.fixture
def own(tmp_path):
    s, token, api = private_stack(tmp_path)
    yield s, token, api
    s.stop_all()


def redis(s, *args):
    return subprocess.run(["redis-cli", "-p", str(s.redis.port), *args], capture_output=True, text=True,
                          timeout=10).stdout.strip()


def test_taking_over_large_recorded_messages_stays_within_the_byte_budget(own):
    """An instance died after recording 24 large messages as sent and before
    acknowledging them: the one that takes them over finds their outcome and
    acknowledges them, reading each message's documents (its body too) for it."""
    s, token, api = own
    ring = records.Keyring(os.path.join(s.dir, "keyring"))
    coll = pymongo.MongoClient(s.mongodb_uri)["mailapi"]["messages"]
    redis(s, "XGROUP", "CREATE", "mailapi:messages", "deliveryd", "0", "MKSTREAM")
    att = base64.b64encode(os.urandom(2 * 1024 * 1024)).decode()
    ids = []
    for i in range(24):
        rcpt = rcpt_with("taken")
        body = message(rcpt, attachments=[{"filename": f"{j}.bin", "content": att} for j in range(2)])
        r = api.send(body, token)
        assert r.status_code == 202, r.text
        mid = r.json()["id"]
        created = records.id_time_ms(mid)
        coll.insert_many(records.message_documents(ring, "acme", mid, created, json.dumps(body).encode(), [rcpt]))
        ids.append(mid)
    # the instance that died: it read them all, and acknowledged none
    redis(s, "XREADGROUP", "GROUP", "deliveryd", "died-1", "COUNT", "100", "STREAMS", "mailapi:messages", ">")
    time.sleep(2.5)
    d = s.start_deliveryd(max_in_flight_bytes="30m", send_timeout="1", claim_idle="2")
    rest = int(open(f"/proc/{d.popen.pid}/status").read().split("VmRSS:")[1].split()[0]) / 1024
    deadline = time.time() + 60
    while redis(s, "XLEN", "mailapi:messages") != "0":
        assert time.time() < deadline, redis(s, "XLEN", "mailapi:messages")
        time.sleep(0.2)
    peak = int(open(f"/proc/{d.popen.pid}/status").read().split("VmHWM:")[1].split()[0]) / 1024
    assert not any(k for k in redis(s, "--scan", "--pattern", "mailapi:messages:msg_*").split("\n") if k)
    if not stackmod.SANITIZE:
        # 24 x ~5.6 MB envelopes: without the budget they were all held at once
        assert peak - rest < 60, f"deliveryd peaked {peak - rest:.0f} MB above its {rest:.0f} MB at rest"
