"""deliveryd's SMTP client against relays that misbehave in the ways real
ones (and hostile ones) do: replies and connection closes arriving
together, replies split, replies the client did not ask for. Each relay is a
small scripted server in this process that counts the messages it took."""
import re
import socket
import threading
import time

import pytest

from conftest import message, private_stack


class Relay:
    """An SMTP server on a thread. `script(cmd, session)` may return bytes to
    send for a command (None: the default reply), or raise Close after
    sending what it returned via session.send. Each message received after
    DATA is kept in `messages` (dot-unstuffed bytes)."""

    def __init__(self, script=None, ehlo=(b"PIPELINING", b"SIZE 10000000", b"8BITMIME")):
        self.script = script or (lambda cmd, s: None)
        self.ehlo = ehlo
        self.messages = []
        self.commands = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self.accept, daemon=True).start()

    def stop(self):
        self.stopped = True
        self.sock.close()

    def accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        s = Session(c)
        try:
            s.send(b"220 hostile.test ESMTP\r\n")
            while True:
                line = s.line()
                if line is None:
                    return
                self.commands.append(line)
                cmd = line.split(b" ", 1)[0].split(b":", 1)[0].upper()
                scripted = self.script(line, s)
                if scripted is not None:
                    s.send(scripted)
                    if s.closed:
                        return
                    if cmd == b"DATA" and scripted.startswith(b"354"):
                        s.last = s.data()
                        self.messages.append(s.last)
                        after = self.script(b".", s)
                        s.send(after if after is not None else b"250 2.0.0 queued\r\n")
                        if s.closed:
                            return
                    continue
                if cmd in (b"EHLO", b"HELO"):
                    s.send(b"".join(b"250-" + e + b"\r\n" for e in (b"hostile.test",) + self.ehlo[:-1]) +
                           b"250 " + self.ehlo[-1] + b"\r\n")
                elif cmd in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                    s.send(b"250 2.1.0 ok\r\n")
                elif cmd == b"DATA":
                    s.send(b"354 go ahead\r\n")
                    s.last = s.data()
                    self.messages.append(s.last)
                    after = self.script(b".", s)
                    s.send(after if after is not None else b"250 2.0.0 queued\r\n")
                    if s.closed:
                        return
                elif cmd == b"QUIT":
                    s.send(b"221 bye\r\n")
                    return
                else:
                    s.send(b"502 5.5.2 what\r\n")
        except Exception:  # noqa: BLE001  (a session deliveryd broke off: its thread ends quietly)
            pass
        finally:
            c.close()


class Session:
    def __init__(self, c):
        self.c = c
        self.buf = b""
        self.closed = False

    def send(self, data):
        if data:
            self.c.sendall(data)
            if self.closed:
                self.c.shutdown(socket.SHUT_WR)

    def close(self):
        """What is sent next goes with the FIN, in one segment (TCP_CORK)."""
        self.closed = True
        self.c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.c.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def data(self):
        lines = []
        while True:
            line = self.line()
            if line is None:
                raise OSError("closed in DATA")
            if line == b".":
                return b"\r\n".join(lines) + b"\r\n"
            lines.append(line[1:] if line.startswith(b".") else line)


@pytest.fixture
def hostile(tmp_path):
    s, token, api = private_stack(tmp_path)
    relays = []

    def relay(script=None, **kw):
        r = Relay(script, **kw)
        relays.append(r)
        return r
    yield s, token, api, relay
    for r in relays:
        r.stop()
    s.stop_all()


def provider(name, port):
    return f"provider {name} smtp url=smtp://127.0.0.1:{port}/mailapi.test"


def copies(relay, mid):
    return sum(1 for m in relay.messages if f"<{mid}@".encode() in m)


def test_a_250_that_comes_with_the_relays_close_is_a_delivery(hostile):
    """A relay that takes the message and hangs up at once (its last
    message on the connection, a restart): the 250 and the FIN arrive in one
    read. The 250 was said: the message is sent, not sent again."""
    s, token, api, relay = hostile

    def script(cmd, session):
        if cmd == b".":
            session.close()
            return b"250 2.0.0 queued as 1\r\n"
        return None
    r = relay(script)
    s.start_deliveryd(lines=[provider("hangup", r.port), "route * hangup"])
    mid = api.send(message("once@example.org"), token).json()["id"]
    rec = api.wait_status(mid, token, "sent", timeout=20)
    time.sleep(3)  # a retry would come after retry_base
    assert copies(r, mid) == 1, rec["events"]
    assert [e["type"] for e in api.get(mid, token).json()["events"]] == ["queued", "sent"]


def test_a_421_right_after_the_354_is_a_retry(hostile):
    """The relay says 354 and, in the same segment, 421 (it is going away):
    no data was taken. The message is tried again later and arrives once;
    deliveryd survives it (under ASan: nothing of the closed connection is
    used after the callback that let it go)."""
    s, token, api, relay = hostile
    calls = []

    def script(cmd, session):
        if cmd.upper() == b"DATA" and not calls:
            calls.append(1)
            session.close()
            return b"354 go ahead\r\n421 4.3.2 shutting down\r\n"
        return None
    r = relay(script)
    d = s.start_deliveryd(lines=[provider("bye", r.port), "route * bye"])
    mid = api.send(message("after-421@example.org"), token).json()["id"]
    rec = api.wait_status(mid, token, "sent", timeout=20)
    assert copies(r, mid) == 1, rec["events"]
    assert d.alive()



def test_a_relay_that_resets_while_the_data_is_written(hostile):
    """A large message, and a relay that reads a little of the data and
    resets the connection: the write fails from the event loop. deliveryd
    tries again later (the message arrives once), and survives it."""
    s, token, api, relay = hostile
    calls = []

    def script(cmd, session):
        if cmd.upper() == b"DATA" and not calls:
            calls.append(1)
            session.send(b"354 go ahead\r\n")
            session.c.recv(4096)
            session.c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            session.closed = True
            return b""
        return None
    r = relay(script)
    d = s.start_deliveryd(lines=[provider("reset", r.port), "route * reset"])
    big = "QUFB" * (3 << 20 >> 2)  # 3 MB of base64
    mid = api.send(message("reset@example.org", attachments=[{"filename": "big.bin", "content": big}]),
                   token).json()["id"]
    rec = api.wait_status(mid, token, "sent", timeout=30)
    assert copies(r, mid) == 1, rec["events"]
    assert d.alive()


SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <string.h>
/* two.relay.test: 127.0.0.2 (where nothing listens), then 127.0.0.1 */
int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res) {
    int (*real)(const char *, const char *, const struct addrinfo *, struct addrinfo **) =
        (int (*)(const char *, const char *, const struct addrinfo *, struct addrinfo **))dlsym(RTLD_NEXT, "getaddrinfo");
    if (node == NULL || strcmp(node, "two.relay.test") != 0) return real(node, service, hints, res);
    struct addrinfo *first = NULL, *second = NULL, *t;
    int rc = real("127.0.0.2", service, hints, &first);
    if (rc != 0) return rc;
    rc = real("127.0.0.1", service, hints, &second);
    if (rc != 0) return rc;
    for (t = first; t->ai_next; t = t->ai_next) {}
    t->ai_next = second;
    *res = first;
    return 0;
}
"""


def test_a_relay_whose_first_address_refuses_is_reached_at_its_next(hostile, tmp_path):
    """A relay's name with two addresses, the first refusing connections
    (one server of several down, an AAAA without a route): the next one
    is tried, within the same deadline (it was the first address only, on
    every connection: the relay was never reached)."""
    import os
    import subprocess

    import stack as stackmod
    s, token, api, relay = hostile
    src, lib = tmp_path / "shim.c", tmp_path / "shim.so"
    src.write_text(SHIM)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src), "-ldl"], check=True)
    plain_env = s.sanitizer_env

    def env(preload):
        e = plain_env(preload)
        asan = stackmod.SANITIZE and subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                                                    text=True).stdout.strip()
        e["LD_PRELOAD"] = " ".join(x for x in (asan, str(lib)) if x)
        return e
    s.sanitizer_env = env
    s.start_deliveryd(lines=[f"provider two smtp url=smtp://two.relay.test:{s.smtp.port}/mailapi.test",
                             "route * two"])
    s.sanitizer_env = plain_env
    mid = api.send(message("second-address@example.org"), token).json()["id"]
    rec = api.wait_status(mid, token, "sent", timeout=20)
    assert [e["type"] for e in rec["events"]] == ["queued", "sent"], rec["events"]
    assert os.path.exists(s.maildir)


@pytest.mark.parametrize("seed", [10, 11, 12, 13])
def test_a_chaotic_relay_never_gets_a_message_it_took_twice(hostile, seed):
    """A relay that, at random, splits its replies into single bytes, makes
    them multi-line, answers any command 4xx, 5xx or 421, sends garbage,
    or hangs up at any point (with or without its reply). Whatever it does,
    a message it answered 250 after the data is never sent to it again,
    every message ends sent or failed, and deliveryd lives (under ASan:
    cleanly). (A recipient the relay refused for now is sent the message
    again, alone: counted per recipient.)"""
    import random
    rng = random.Random(seed)
    lock = threading.Lock()
    took = {}  # (message id, recipient) -> times the relay said 250 after the data with it accepted

    def reply(session, text):
        """text, maybe multi-line, maybe a byte at a time, maybe with the FIN."""
        code, rest = text[:3], text[4:]
        if rng.random() < 0.2:
            text = f"{code}-first line\r\n{code}-{'x' * rng.randint(0, 300)}\r\n{code} {rest}"
        data = (text + "\r\n").encode()
        if rng.random() < 0.2:
            for i in range(len(data)):
                session.c.sendall(data[i:i + 1])
            return b""
        return data

    def script(cmd, session):
        with lock:
            roll = rng.random()
        verb = cmd.split(b" ", 1)[0].split(b":", 1)[0].upper()
        if verb in (b"EHLO", b"QUIT"):
            return None
        if verb in (b"MAIL", b"RSET"):
            session.accepted = []
        if roll < 0.04:
            session.close()
            return b"\r\n" if rng.random() < 0.5 else b"421 4.3.2 going away\r\n"
        if roll < 0.06:
            return b"garbage that is not SMTP\r\n"
        if verb == b"DATA" and roll < 0.1:
            return reply(session, "451 4.3.0 not now")
        if verb == b"RCPT" and roll < 0.2:
            return reply(session, rng.choice(["550 5.1.1 no such user", "452 4.2.2 mailbox full", "421 4.3.2 bye"]))
        if verb == b".":
            if roll < 0.15:
                return reply(session, "554 5.6.0 content refused")
            found = re.search(rb"<(msg_[0-9A-Z]+)@", session.last)
            if not found:  # no recipient taken: deliveryd ends the data at once
                return reply(session, "250 2.0.0 nothing")
            mid = found.group(1).decode()
            if roll < 0.25:
                session.close()  # took it, and says so with its FIN
            with lock:
                for rcpt in session.accepted:
                    took[(mid, rcpt)] = took.get((mid, rcpt), 0) + 1
            return reply(session, "250 2.0.0 queued")
        if verb == b"DATA":
            return reply(session, "354 go ahead")
        if verb == b"RCPT":
            session.accepted.append(cmd.split(b"<", 1)[1].split(b">", 1)[0].decode())
        return reply(session, "250 2.1.0 ok")

    s, token, api, relay = hostile
    r = relay(script)
    d = s_start(hostile, r)
    ids = []
    for i in range(40):
        rcpts = [f"c{i}-{k}@example.org" for k in range(1 + i % 3)]
        resp = api.send({"from": "sender@example.com", "to": rcpts, "subject": f"chaos {i}", "text": "x\n" * (1 + i * 50)},
                        token)
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["id"])
    deadline = time.time() + 90
    pending = set(ids)
    while pending and time.time() < deadline:
        for mid in list(pending):
            if api.get(mid, token).json()["status"] in ("sent", "failed"):
                pending.discard(mid)
        time.sleep(0.5)
    assert not pending, f"{len(pending)} not finished"
    assert d.alive()
    twice = {m: n for m, n in took.items() if n > 1}
    assert not twice, twice


def s_start(hostile, r):
    s, token, api, _ = hostile
    return s.start_deliveryd(lines=[provider("chaos", r.port), "route * chaos"], max_attempts="6", retry_base="1", breaker_cooldown="1",
                             retry_max_delay="2")


@pytest.mark.parametrize("refusal", [b"552 5.5.3 Too many recipients", b"452 4.5.3 Too many recipients"])
def test_recipients_past_the_relays_limit_are_sent_in_another_transaction(hostile, refusal):
    """A relay that takes 2 recipients a transaction and refuses the 3rd,
    as RFC 821 had it (552) or as RFC 5321 does (452): the third is sent
    later, alone, never failed for good (RFC 5321 4.5.3.1.10: a client
    SHOULD treat 552 there as temporary)."""
    s, token, api, relay = hostile

    def script(cmd, session):
        verb = cmd.split(b" ", 1)[0].split(b":", 1)[0].upper()
        if verb == b"MAIL":
            session.rcpts = 0
        if verb == b"RCPT":
            session.rcpts += 1
            if session.rcpts > 2:
                return refusal + b"\r\n"
        return None
    r = relay(script)
    s.start_deliveryd(lines=[provider("limited", r.port), "route * limited"])
    to = [f"lim{i}@example.org" for i in range(3)]
    mid = api.send({"from": "sender@example.com", "to": to, "subject": "limit", "text": "x"}, token).json()["id"]
    rec = api.wait_status(mid, token, "sent", timeout=20)
    deadline = time.time() + 10
    while any(x["status"] != "sent" for x in rec["recipients"]) and time.time() < deadline:
        time.sleep(0.3)
        rec = api.get(mid, token).json()
    assert [x["status"] for x in rec["recipients"]] == ["sent"] * 3, rec["events"]
    assert copies(r, mid) == 2


def test_a_relay_offering_auth_with_no_mechanism(hostile):
    """"250-AUTH" with nothing after it (a relay misconfigured, or hostile):
    deliveryd reads it as no mechanism it knows and sends without AUTH; it
    threw std::out_of_range from the event loop's callback and died
    (std::terminate) on every connection to such a relay."""
    s, token, api, relay = hostile
    r = relay(ehlo=(b"PIPELINING", b"AUTH", b"8BITMIME"))
    d = s.start_deliveryd(lines=[provider("bareauth", r.port), "route * bareauth"])
    mid = api.send(message("bare-auth@example.org"), token).json()["id"]
    api.wait_status(mid, token, "sent", timeout=20)
    assert copies(r, mid) == 1 and d.alive()
