"""DELETE /v1/messages/{id} (issue 11): a queued or scheduled message is
cancelled (200, status cancelled, never sent); once a send has started or
finished it is 409; and a cancel racing delivery never lets a cancelled
message reach a relay."""
import concurrent.futures
import datetime
import random
import signal
import threading
import time
import uuid

import pytest
import redis as redislib

from conftest import Api, Mailbox, message, private_stack, store_records
from test_delivery import rcpt_with


@pytest.fixture
def own(tmp_path):
    s, token, api = private_stack(tmp_path)
    yield s, token, api
    s.stop_all()


def cancel(api, mid, token):
    return api.http.delete(api.base + "/v1/messages/" + mid, headers={"Authorization": "Bearer " + token}, timeout=10)


def later(seconds):
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_scheduled_message_is_cancelled_and_never_sent(own):
    s, token, api = own
    s.start_deliveryd()
    mid = api.send(message(rcpt_with("sched"), send_at=later(3600)), token).json()["id"]
    r = redislib.Redis(port=s.redis.port)
    deadline = time.time() + 10
    while r.zscore("mailapi:scheduled", mid) is None:  # waiting in the scheduled set: pending
        assert time.time() < deadline
        time.sleep(0.05)
    got = cancel(api, mid, token)
    assert got.status_code == 200 and got.json() == {"id": mid, "status": "cancelled"}, got.text
    now = api.get(mid, token).json()
    assert now["status"] == "cancelled", now  # at once, whatever deliveryd did yet
    rec = api.wait_status(mid, token, "cancelled")
    assert [e["type"] for e in rec["events"]] == ["queued", "cancelled"]
    deadline = time.time() + 10
    while r.exists(f"mailapi:messages:{mid}"):  # recorded, then let go
        assert time.time() < deadline
        time.sleep(0.05)
    assert r.zscore("mailapi:scheduled", mid) is None
    assert cancel(api, mid, token).status_code == 200  # again: the same answer
    assert store_records(s.mongodb_uri, [mid])[mid]["status"] == "cancelled"
    assert Mailbox(s.maildir).count(mid) == 0


def test_a_queued_message_cancelled_while_deliveryd_is_away_is_recorded_when_it_is_back(own):
    s, token, api = own
    mid = api.send(message(rcpt_with("away")), token).json()["id"]
    assert cancel(api, mid, token).status_code == 200
    s.start_deliveryd()
    rec = api.wait_status(mid, token, "cancelled")
    assert [e["type"] for e in rec["events"]] == ["queued", "cancelled"]
    time.sleep(0.5)
    assert Mailbox(s.maildir).count(mid) == 0


def test_too_late_unknown_and_not_allowed(own):
    s, token, api = own
    s.start_deliveryd()
    sent = api.send(message(rcpt_with("done")), token).json()["id"]
    api.wait_status(sent, token, "sent")
    got = cancel(api, sent, token)
    assert got.status_code == 409 and got.json()["error"]["code"] == "not_cancellable", got.text
    slow = api.send(message(rcpt_with("slow3")), token).json()["id"]  # 3 s at DATA: being sent
    deadline = time.time() + 10
    r = redislib.Redis(port=s.redis.port)
    while r.hget(f"mailapi:messages:{slow}", "owner") is None:
        assert time.time() < deadline
        time.sleep(0.02)
    got = cancel(api, slow, token)
    assert got.status_code == 409 and got.json()["error"]["code"] == "not_cancellable", got.text
    api.wait_status(slow, token, "sent")
    for unknown in ("msg_01M8YBGX923932RY9ZT44RCVAQ", "nope"):
        assert cancel(api, unknown, token).status_code == 404
    other = s.add_key("globex", "globex", "send+read").token()
    s.nginx.send_signal(signal.SIGHUP)
    time.sleep(1)
    queued = api.send(message(rcpt_with("sched"), send_at=later(3600)), token).json()["id"]
    assert cancel(api, queued, other).status_code == 404  # another tenant's: as if unknown
    reader = s.add_key("reader", "acme", "read").token()
    s.nginx.send_signal(signal.SIGHUP)
    time.sleep(1)
    assert cancel(api, queued, reader).status_code == 403
    assert api.get(queued, token).json()["status"] == "scheduled"


def test_cancels_racing_delivery_never_reach_a_relay(own):
    """Thousands of sends, each cancelled at a random moment while two
    deliveryd instances drain: every 200 is never delivered and ends
    cancelled, every 409 is delivered exactly once."""
    s, token, api = own
    n = 2000
    ids = []
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        sends = list(pool.map(lambda i: Api(api.base).send(message(f"race{i}@example.org"), token), range(n)))
    assert all(r.status_code == 202 for r in sends)
    ids = [r.json()["id"] for r in sends]
    s.start_deliveryd(max_in_flight="32")
    s.start_deliveryd(name="deliveryd2", max_in_flight="32")
    rng = random.Random(7)
    order = ids[:]
    rng.shuffle(order)
    answers = {}
    lock = threading.Lock()

    def one(mid):
        time.sleep(rng.random() * 0.002)
        code = cancel(Api(api.base), mid, token).status_code
        with lock:
            answers[mid] = code
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, order))
    assert set(answers.values()) <= {200, 409}, set(answers.values())
    cancelled = [m for m in ids if answers[m] == 200]
    too_late = [m for m in ids if answers[m] == 409]
    assert cancelled and too_late, (len(cancelled), len(too_late))  # the race really was run
    deadline = time.time() + 120
    while True:
        recs = store_records(s.mongodb_uri, ids)
        if len(recs) == n and all(r["status"] in ("sent", "cancelled") for r in recs.values()):
            break
        assert time.time() < deadline, f"{sum(1 for r in recs.values() if r['status'] in ('sent', 'cancelled'))}/{n}"
        time.sleep(0.5)
    counts = Mailbox(s.maildir).counts()
    assert [m for m in cancelled if counts.get(m, 0) != 0] == []
    assert [m for m in cancelled if recs[m]["status"] != "cancelled"] == []
    assert [m for m in too_late if counts.get(m, 0) != 1] == []
    assert [m for m in too_late if recs[m]["status"] != "sent"] == []
    print(f"cancel race: {len(cancelled)} cancelled, {len(too_late)} too late")
