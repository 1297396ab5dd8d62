"""Fixtures that run the real stack: nginx with the module, redis-server,
FerretDB, an SMTP server (aiosmtpd writing a Maildir) and deliveryd, all on
free loopback ports in a pytest temp dir (kept after a failure)."""
import email
import email.policy
import mailbox
import os
import subprocess
import sys
import time
import uuid

import pytest
import requests

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import stack as stackmod  # noqa: E402


class Api:
    def __init__(self, base, verify=False):
        self.base = base
        self.http = requests.Session()
        self.http.verify = verify
        self.http.trust_env = False  # no proxies or CA bundles from the environment

    def send(self, body, token, headers=None, **kw):
        h = {"Authorization": "Bearer " + token} if token else {}
        h.update(headers or {})
        return self.http.post(self.base + "/v1/messages", json=body, headers=h, timeout=10, **kw)

    def post_raw(self, path, data, headers, **kw):
        return self.http.post(self.base + path, data=data, headers=headers, timeout=10, **kw)

    def list(self, recipient, token, **params):
        params["recipient"] = recipient
        return self.http.get(self.base + "/v1/messages", params=params,
                             headers={"Authorization": "Bearer " + token}, timeout=10)

    def get(self, message_id, token):
        return self.http.get(self.base + "/v1/messages/" + message_id,
                             headers={"Authorization": "Bearer " + token}, timeout=10)

    def wait_status(self, message_id, token, status="sent", timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = self.get(message_id, token)
            if r.status_code == 200 and r.json()["status"] == status:
                return r.json()
            time.sleep(0.1)
        raise AssertionError(f"{message_id} did not reach {status}: last {r.status_code} {r.text[:300]}")


class Mailbox:
    def __init__(self, path):
        self.path = path

    def find(self, message_id, timeout=15):
        """The delivered mail whose Message-ID carries our message id."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for key in os.listdir(os.path.join(self.path, "new")):
                with open(os.path.join(self.path, "new", key), "rb") as f:
                    msg = email.message_from_binary_file(f, policy=email.policy.default)
                if message_id in (msg["Message-ID"] or ""):
                    return msg
            time.sleep(0.1)
        raise AssertionError(f"no mail with {message_id} arrived in {self.path}")

    def count(self, message_id):
        return self.counts().get(message_id, 0)

    def counts(self):
        """How many mails arrived per message id (read from Message-ID)."""
        seen = {}
        for m in mailbox.Maildir(self.path, create=False):
            mid = (m["Message-ID"] or "").strip("<>").split("@")[0]
            seen[mid] = seen.get(mid, 0) + 1
        return seen


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    s = stackmod.Stack(str(tmp_path_factory.mktemp("stack")))
    s.add_key("acme_full", "acme", "send+read")
    s.add_key("acme_send", "acme", "send")
    s.add_key("acme_read", "acme", "read")
    s.add_key("globex_full", "globex", "send+read")
    try:
        s.start_all()
    except Exception:
        print(s.failure_report())
        s.stop_all()
        raise
    yield s
    s.stop_all()


@pytest.fixture(scope="session")
def keys(stack):
    return {k.id: k for k in stack.keys}


@pytest.fixture(scope="session")
def api(stack):
    return Api(f"http://127.0.0.1:{stack.nginx.port}")


@pytest.fixture(scope="session")
def inbox(stack):
    return Mailbox(stack.maildir)


@pytest.fixture
def rcpt():
    """A recipient no other test uses."""
    return f"r-{uuid.uuid4().hex[:12]}@example.org"


@pytest.fixture
def redis_cli(stack):
    def run(*args):
        out = subprocess.run(["redis-cli", "-p", str(stack.redis.port), "--no-raw", *args],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    return run


@pytest.fixture
def queue_len(redis_cli):
    def xlen():
        return int(redis_cli("XLEN", "mailapi:messages").split()[-1])
    return xlen


@pytest.fixture(autouse=True)
def no_sanitizer_reports(request):
    """Under MAILAPI_SANITIZE=1, any ASan/UBSan report from nginx or deliveryd
    fails the test that was running when it appeared."""
    yield
    if not stackmod.SANITIZE:
        return
    stacks = [v for v in request.node.funcargs.values() if isinstance(v, stackmod.Stack)]
    for s in stacks:
        reports = s.sanitizer_reports()
        assert not reports, "\n".join(f"--- {p}\n{t[:4000]}" for p, t in reports.items())


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed and "stack" in item.funcargs:
        rep.sections.append(("server logs", item.funcargs["stack"].failure_report()))


def private_stack(path, standin=False):
    """A whole stack of its own (for tests that stop, kill or reconfigure its
    parts), without deliveryd: the test starts it with the settings it needs.
    Returns the stack, a send+read token and an Api on its nginx."""
    s, tokens, api = tenants_stack(path, ("acme",), standin)
    return s, tokens["acme"], api


def tenants_stack(path, tenants, standin=False):
    """private_stack with a send+read key for each tenant: (stack, {tenant: token}, Api)."""
    s = stackmod.Stack(str(path))
    tokens = {t: s.add_key(t if len(tenants) > 1 else "private", t, "send+read").token() for t in tenants}
    try:
        s.start_redis()
        s.start_ferretdb()
        s.start_smtp()
        if standin:
            s.start_standin()
        s.start_nginx()
    except Exception:
        print(s.failure_report())
        s.stop_all()
        raise
    return s, tokens, Api(f"http://127.0.0.1:{s.nginx.port}")


def message(rcpt, **extra):
    body = {"from": "sender@example.com", "to": [rcpt], "subject": "Hello", "text": "Hello there"}
    body.update(extra)
    return body
