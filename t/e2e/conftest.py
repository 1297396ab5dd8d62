"""Fixtures that run the real stack: nginx with the module, redis-server,
FerretDB, an SMTP server (aiosmtpd writing a Maildir) and deliveryd, all on
free loopback ports in a pytest temp dir (kept after a failure)."""
import email
import email.policy
import glob
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
        """POST /v1/messages/search: the recipient travels in the body, never the URL."""
        body = dict(params, recipient=recipient)
        return self.http.post(self.base + "/v1/messages/search", json=body,
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
def enqueued(redis_cli):
    """Entries ever added to the stream (XLEN falls as messages are
    delivered; this only grows: by one per accepted message, and by one per
    retry or send_at that comes due)."""
    def added():
        out = redis_cli("XINFO", "STREAM", "mailapi:messages").split("\n")
        for i, line in enumerate(out):
            if line.strip().endswith('"entries-added"'):
                return int(out[i + 1].split()[-1])
        raise AssertionError("no entries-added in XINFO STREAM: " + " ".join(out)[:300])
    return added


# ---------------------------------------------------------------- sanitizer reports
#
# Under MAILAPI_SANITIZE=1 every process a stack starts writes its ASan/UBSan
# reports to <stack dir>/sanitizer.<pid> (Stack.sanitizer_env). Every Stack
# registers itself (stack.STACKS), so after each test the reports of every
# stack are read, whoever made it (a fixture of any shape, or the test) and
# whether its processes are still running, exited or were killed; each report
# fails the test that was running when it appeared, and only that one.

_REPORTED = {}  # path: characters already attributed to a test
_LOOSE_REPORTS = []  # the directory for processes started without a stack's environment


def new_sanitizer_reports():
    """{path: text} of the reports (or the part of a report) that appeared
    since the last call, from every stack made in this process."""
    dirs = list(dict.fromkeys([s.dir for s in stackmod.STACKS] + _LOOSE_REPORTS))
    out = {}
    for d in dirs:
        for path, text in stackmod.sanitizer_reports_in(d).items():
            seen = _REPORTED.get(path, -1)
            if len(text) > seen:  # new, or grown since (UBSan goes on after a report)
                out[path] = text[max(seen, 0):]
                _REPORTED[path] = len(text)
    return out


def format_reports(reports, limit=6000):
    return "\n".join(f"--- {p}\n{t[:limit]}" + ("\n[...]" if len(t) > limit else "") for p, t in reports.items())


@pytest.fixture(scope="session", autouse=True)
def sanitizer_reports_of_other_processes(tmp_path_factory):
    """Processes a test starts without a stack's environment (deliveryd
    --check-config, ...) report into a directory of the session's own."""
    if stackmod.SANITIZE and "ASAN_OPTIONS" not in os.environ:
        d = str(tmp_path_factory.mktemp("sanitizer"))
        _LOOSE_REPORTS.append(d)
        os.environ["ASAN_OPTIONS"] = f"log_path={d}/sanitizer:abort_on_error=0"
        os.environ["UBSAN_OPTIONS"] = f"log_path={d}/sanitizer:print_stacktrace=1"
    yield


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After a test's teardown (its fixtures have stopped their stacks, and a
    module's or the session's stack stopped with its last test), any report
    that appeared fails the test."""
    # the timeout covers setup and call; teardown stops the servers (each
    # stop is bounded) and reads the reports, and must finish
    cancel = getattr(item, "cancel_timeout", None)
    if cancel:
        cancel()
    outcome = yield
    reports = new_sanitizer_reports()
    if reports:
        also = f"\n(the teardown also failed: {outcome.excinfo[1]!r})" if outcome.excinfo else ""
        pytest.fail(f"{len(reports)} sanitizer report(s) from the processes of this test (or of the stacks "
                    f"stopped after it):\n" + format_reports(reports) + also, pytrace=False)


# ---------------------------------------------------------------- timeouts and server logs
#
# A test gets MAILAPI_TEST_TIMEOUT seconds (300; pytest-timeout's --timeout or
# a timeout marker overrides it) for its setup and call, and never more than
# what is left of the whole run (MAILAPI_TEST_DEADLINE, a Unix time, set by
# build.sh): a test that runs out fails with its servers' logs, and once the
# deadline is near, pytest stops and prints its summary.

DEFAULT_TIMEOUT = float(os.environ.get("MAILAPI_TEST_TIMEOUT", "300"))
DEADLINE = float(os.environ.get("MAILAPI_TEST_DEADLINE", "0")) or None
LAST_START = 20  # seconds: no test starts closer to the deadline than this


def _configured_timeout(item):
    marker = item.get_closest_marker("timeout")
    if marker is not None:
        return float(marker.args[0] if marker.args else marker.kwargs["timeout"])
    explicit = (item.config.getoption("timeout", None) is not None or os.environ.get("PYTEST_TIMEOUT")
                or item.config.getini("timeout"))
    return getattr(item.config, "_env_timeout", None) if explicit else DEFAULT_TIMEOUT


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    item.stacks_before = len(stackmod.STACKS)
    if item.config.pluginmanager.hasplugin("timeout"):
        timeout = _configured_timeout(item) or 0  # 0: none
        if DEADLINE:
            left = DEADLINE - time.time()
            if left < LAST_START:
                item.session.shouldstop = "the whole run's time budget (MAILAPI_TEST_BUDGET) is spent"
                item.add_marker(pytest.mark.skip(reason="the whole run's time budget is spent"))
            timeout = round(min(timeout, left) if timeout else left, 1)
        if timeout and timeout > 0:
            item.add_marker(pytest.mark.timeout(timeout), append=False)
    yield


def stacks_of(item):
    """The stacks a test used: made while it ran (its fixtures' included), or
    handed to it by a fixture (alone, or in a tuple with a token and an Api)."""
    found = list(stackmod.STACKS[getattr(item, "stacks_before", len(stackmod.STACKS)):])
    for v in (getattr(item, "funcargs", None) or {}).values():
        for x in (v if isinstance(v, (tuple, list)) else (v,)):
            if isinstance(x, stackmod.Stack):
                found.append(x)
    return list(dict.fromkeys(found))


def server_logs(s, lines=30):
    """The stack's failure report; once stopped, the tails of its logs."""
    if s.procs:
        return s.failure_report()
    out = [f"stack directory kept: {s.dir} (stopped)"]
    for log in sorted(glob.glob(os.path.join(s.dir, "*.log"))):
        try:
            with open(log, errors="replace") as f:
                out += [f"--- {os.path.basename(log)} ---", "".join(f.readlines()[-lines:])]
        except OSError:
            pass
    return "\n".join(out)


_CONFIG = []


def pytest_configure(config):
    _CONFIG.append(config)


def pytest_keyboard_interrupt(excinfo):
    """Interrupted (Ctrl-C, or build.sh's hard limit): the logs of the stacks
    still running, before the teardown stops them."""
    tr = _CONFIG[0].pluginmanager.get_plugin("terminalreporter") if _CONFIG else None
    for s in stackmod.STACKS:
        if tr and any(p.alive() for p in s.procs):
            tr.write_sep("-", "server logs (interrupted)")
            tr.write_line(server_logs(s))


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:  # a timeout fails the call (or the setup) too
        for s in stacks_of(item):
            rep.sections.append(("server logs", server_logs(s)))


def standin_deliveries(control, name):
    """{message id: how many times the stand-in accepted it} for one of its
    providers (sendgrid, generic, mailgun, postmark, ses)."""
    def mid(b):
        if name == "sendgrid":
            return b["personalizations"][0].get("custom_args", {}).get("mailapi_id")
        if name == "generic":
            return b.get("id")
        if name == "mailgun":
            return b.get("v:mailapi_id")
        if name == "postmark":
            return (b.get("Metadata") or {}).get("mailapi_id")
        return next((t["Value"] for t in b.get("EmailTags", []) if t["Name"] == "mailapi_id"), None)
    seen = {}
    for b in requests.get(f"{control}/_received/{name}", timeout=5).json():
        seen[mid(b)] = seen.get(mid(b), 0) + 1
    return seen


# ---------------------------------------------------------------- duplicates in the crash window
#
# Exactly once is asserted everywhere except where a test kills deliveryd
# between a provider taking a message and that being remembered (the
# documented crash window): there a second delivery is counted, printed and
# listed at the end of the run, not failed.

CRASH_WINDOW = []


def crash_window(text):
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    CRASH_WINDOW.append(f"{test}: {text}")
    print("crash window: " + text)


def pytest_terminal_summary(terminalreporter):
    if CRASH_WINDOW:
        terminalreporter.write_sep("-", "duplicates in the crash window (allowed, counted)")
        for line in CRASH_WINDOW:
            terminalreporter.write_line(line)


TERMINAL = ("sent", "failed", "cancelled")


def store_records(mongodb_uri, ids=None):
    """The store's records as the API derives them (common/records.cpp):
    {message id: {"message": bool, "events": [...], "status": ...}}, read
    straight from MongoDB (for tests that check the store itself)."""
    import pymongo
    coll = pymongo.MongoClient(mongodb_uri, serverSelectionTimeoutMS=3000)["mailapi"]["messages"]
    out = {}
    # bodies and envelopes left out: FerretDB sends a query's first batch in
    # one reply of at most 48 MB
    for d in coll.find({"m": {"$in": list(ids)}} if ids is not None else {}, {"envelope": 0}):
        r = out.setdefault(d["m"], {"message": False, "events": {}, "repeats": []})
        if "eid" not in d and "events" not in d:
            continue  # a large message's body
        given = d["events"] if "events" in d else [d]
        r["message"] |= "events" in d
        for e in given:
            if e["eid"] in r["events"]:
                r["repeats"].append(e["eid"])  # an event id written twice: never should be
                if "events" not in d:
                    continue  # the message document's copy was first
            r["events"][e["eid"]] = e
    for r in out.values():
        terminal = [e for e in r["events"].values() if e["eid"].startswith("t") and e["type"] in TERMINAL]
        r["terminal"] = sorted(terminal, key=lambda e: int(e["eid"][1:]))
        r["status"] = r["terminal"][-1]["type"] if terminal else "queued"
    return out


def private_stack(path, standin=False):
    """A whole stack of its own (for tests that stop, kill or reconfigure its
    parts), without deliveryd: the test starts it with the settings it needs.
    Returns the stack, a send+read token and an Api on its nginx."""
    s, tokens, api = tenants_stack(path, ("acme",), standin)
    return s, tokens["acme"], api


def tenants_stack(path, tenants, standin=False, before_nginx=None, **nginx):
    """private_stack with a send+read key for each tenant: (stack, {tenant: token}, Api).
    before_nginx(stack) runs once the others are up (e.g. to write files nginx reads)."""
    s = stackmod.Stack(str(path))
    tokens = {t: s.add_key(t if len(tenants) > 1 else "private", t, "send+read").token() for t in tenants}
    try:
        s.start_redis()
        s.start_ferretdb()
        s.start_smtp()
        if standin:
            s.start_standin()
        if before_nginx:
            before_nginx(s)
        s.start_nginx(**nginx)
    except Exception:
        print(s.failure_report())
        s.stop_all()
        raise
    return s, tokens, Api(f"http://127.0.0.1:{s.nginx.port}")


def rfc2047(value):
    """A header value with its encoded words decoded (RFC 2047), as a reader shows it."""
    import email.header
    return str(email.header.make_header(email.header.decode_header(value)))


def message(rcpt, **extra):
    body = {"from": "sender@example.com", "to": [rcpt], "subject": "Hello", "text": "Hello there"}
    body.update(extra)
    return body
