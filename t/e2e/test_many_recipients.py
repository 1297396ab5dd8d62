"""Messages with more recipients than the default 50, as the module lets a
deployment allow (mail_api_max_recipients 1..1000)."""
import time

import pytest

import stack as stackmod
from conftest import Api, Mailbox


@pytest.fixture
def big(tmp_path):
    s = stackmod.Stack(str(tmp_path))
    token = s.add_key("private", "acme", "send+read").token()
    try:
        s.start_redis()
        s.start_ferretdb()
        s.start_smtp()
        s.start_nginx(extra_http="mail_api_max_recipients 1000;")
    except Exception:
        print(s.failure_report())
        s.stop_all()
        raise
    yield s, token, Api(f"http://127.0.0.1:{s.nginx.port}")
    s.stop_all()


def test_a_message_to_52_recipients_is_recorded(big):
    """52 recipients, all taken by the relay: the mail arrives and the
    record is written. (It was refused by the store, "index row size 2784
    exceeds btree version 4 maximum 2704": FerretDB's btree index on rk held
    the whole array of recipient keys; deliveryd no longer asks FerretDB for
    that index, which its queries never used.)"""
    s, token, api = big
    s.start_deliveryd()
    r = api.send({"from": "sender@example.com", "to": [f"r{i}@example.org" for i in range(52)],
                  "subject": "many", "text": "hello"}, token)
    assert r.status_code == 202, r.text
    mid = r.json()["id"]
    Mailbox(s.maildir).find(mid)  # delivered
    time.sleep(1)
    api.wait_status(mid, token, "sent", timeout=10)
