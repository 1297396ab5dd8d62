"""A message's status only moves forward (DESIGN.md, invariant 6), whichever
of Redis and the store answers."""
import os
import signal
import time

import pytest

from conftest import message, private_stack
from test_delivery import rcpt_with


@pytest.fixture
def own(tmp_path):
    s, token, api = private_stack(tmp_path)
    yield s, token, api
    s.stop_all()


def test_a_dead_lettered_message_does_not_go_back_to_queued_while_the_store_is_away(own):
    """A dead letter keeps its hash in Redis (to be replayed), so Redis says
    'accepted and not finished'; with the store stalled that alone made GET
    answer 'queued' for a message it had shown 'failed'."""
    s, token, api = own
    s.start_deliveryd(max_attempts="1", retry_base="1")
    mid = api.send(message(rcpt_with("tempfail")), token).json()["id"]
    api.wait_status(mid, token, "failed", timeout=30)
    deadline = time.time() + 10
    import subprocess
    while subprocess.run(["redis-cli", "-p", str(s.redis.port), "XLEN", "mailapi:dead"],
                         capture_output=True, text=True).stdout.strip() != "1":
        assert time.time() < deadline, "no dead letter"
        time.sleep(0.2)
    assert api.get(mid, token).json()["status"] == "failed"
    os.kill(s.mongo.popen.pid, signal.SIGSTOP)
    try:
        r = api.get(mid, token)
    finally:
        os.kill(s.mongo.popen.pid, signal.SIGCONT)
    assert r.status_code == 503 or r.json()["status"] == "failed", r.text
