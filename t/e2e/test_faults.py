"""Every accepted message delivered exactly once, under the faults we can
cause: reloads that change providers, schedules past max_age, two instances
with slow sends, relay policy refusals, key rotation, Redis killed with
sends pending, takeovers in the window between a send and its record."""
import concurrent.futures
import os
import signal
import subprocess
import time

import pytest
import redis as redislib

import stack as stackmod
from conftest import Api, Mailbox, message, private_stack, store_records, tenants_stack
from test_delivery import rcpt_with, send_many, wait_terminal
from test_routing import accounts, wait_log


@pytest.fixture
def own(tmp_path):
    s, token, api = private_stack(tmp_path)
    yield s, token, api
    s.stop_all()


def exactly_once(s, ids, status="sent", generations=1):
    """One record, one terminal event a generation (a replay is a new one)
    and one delivery per message."""
    recs = store_records(s.mongodb_uri, ids)
    assert sorted(recs) == sorted(ids), f"{len(set(ids) - set(recs))} messages have no record"
    bad = {m: (r["status"], len(r["terminal"]), r["repeats"]) for m, r in recs.items()
           if r["status"] != status or len(r["terminal"]) != generations or r["repeats"]}
    assert not bad, bad
    if status == "sent":
        counts = Mailbox(s.maildir).counts()
        wrong = {m: counts.get(m, 0) for m in ids if counts.get(m, 0) != 1}
        assert not wrong, f"deliveries other than one: {wrong}"


def test_a_reload_that_adds_and_changes_providers_sends_through_them(tmp_path):
    """The providers a SIGHUP builds read the running configuration, not the
    reload's local copy (ASan saw a stack-use-after-return, the release
    binary aborted on the next send)."""
    s, tokens, api = tenants_stack(tmp_path, ("acme",), standin=True)
    try:
        token = tokens["acme"]
        dd = s.start_deliveryd(lines=accounts(s) + ["route * mx"])
        first = api.send(message(rcpt_with("before")), token).json()["id"]
        api.wait_status(first, token, "sent")
        # a new SMTP account, a changed one, a new domain for Message-IDs and a new timeout
        lines = accounts(s) + [f"provider mx2 smtp url=smtp://127.0.0.1:{s.smtp.port}/other.test",
                               "route * mx2, mx"]
        lines[2] = f"provider mx smtp url=smtp://127.0.0.1:{s.smtp.port}/changed.test"
        s.write_deliveryd_conf(dd.conf, lines, admin_listen=dd.admin[len("http://"):],
                               message_id_domain="reloaded.test", send_timeout="3")
        dd.popen.send_signal(signal.SIGHUP)
        wait_log(dd, '"msg":"reloaded"')
        ids = [api.send(message(rcpt_with(f"after{i}")), token).json()["id"] for i in range(5)]
        for mid in ids:
            assert api.wait_status(mid, token, "sent")["events"][-1]["provider"] == "mx2"
            assert Mailbox(s.maildir).find(mid)["Message-ID"] == f"<{mid}@reloaded.test>"
        assert dd.alive()
        exactly_once(s, [first] + ids)
    finally:
        s.stop_all()


def test_a_message_scheduled_further_ahead_than_max_age_is_sent(own):
    """max_age counts from send_at: a message scheduled at the edge of what
    the API allows is not failed unattempted when it comes due."""
    s, token, api = own
    s.start_deliveryd(max_age="2")
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 5))
    mid = api.send(message(rcpt_with("later"), send_at=at), token).json()["id"]
    rec = api.wait_status(mid, token, "sent", timeout=20)
    assert [e["type"] for e in rec["events"]] == ["queued", "sent"]
    exactly_once(s, [mid])


def start_refusing_relay(s, reply="554 5.7.1 Relay access denied"):
    return s.start_smtp(name="refusing", refuse=reply).port


def test_a_relays_policy_refusal_fails_over_and_else_waits_in_the_dead_letters(own):
    """554 5.7.1 is the relay refusing us, not the recipient refusing the
    mail: the next route takes it; with none, it is given up into the dead
    letters (replayable once the relay is set right), not failed for good.
    The relay's own reply is the reason."""
    s, token, api = own
    policy = start_refusing_relay(s)
    lines = [f"provider pol smtp url=smtp://127.0.0.1:{policy}/mailapi.test",
             f"provider mx smtp url=smtp://127.0.0.1:{s.smtp.port}/mailapi.test"]
    dd = s.start_deliveryd(lines=lines + ["route * pol, mx"])
    mid = api.send(message(rcpt_with("policy")), token).json()["id"]
    rec = api.wait_status(mid, token, "sent")
    assert [(e["type"], e.get("provider"), e.get("code")) for e in rec["events"]] == [
        ("queued", None, None), ("provider_failed", "pol", 554), ("sent", "mx", 250)]
    assert rec["events"][1]["reason"] == "554 5.7.1 Relay access denied"

    s.write_deliveryd_conf(dd.conf, lines + ["route * pol"], admin_listen=dd.admin[len("http://"):])
    dd.popen.send_signal(signal.SIGHUP)
    wait_log(dd, '"msg":"reloaded"')
    stuck = api.send(message(rcpt_with("nowhere")), token).json()["id"]
    rec = api.wait_status(stuck, token, "failed")
    assert rec["events"][-1]["reason"] == "refused by the relay's policy: 554 5.7.1 Relay access denied"
    r = redislib.Redis(port=s.redis.port)
    deadline = time.time() + 10
    while r.xlen("mailapi:dead") != 1 and time.time() < deadline:
        time.sleep(0.1)
    assert r.xlen("mailapi:dead") == 1
    # the relay set right (here: the route), the dead letter is replayed and sent
    s.write_deliveryd_conf(dd.conf, lines + ["route * mx"], admin_listen=dd.admin[len("http://"):])
    dd.popen.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    out = subprocess.run([stackmod.DELIVERYD, "-c", dd.conf, "--replay-dead"], capture_output=True, text=True)
    assert "1 dead letters put back" in out.stdout, out.stdout + out.stderr
    rec = api.wait_status(stuck, token, "sent")
    assert [e["type"] for e in rec["events"]][-2:] == ["failed", "sent"]
    exactly_once(s, [mid])
    exactly_once(s, [stuck], generations=2)


def test_a_key_rotation_that_reaches_nginx_first_makes_messages_wait_not_fail(own):
    """nginx reloaded with a new sealing key before deliveryd has it: the new
    messages wait for it (deliveryd reads its keyring again) instead of
    being failed and dead-lettered."""
    import base64
    import shutil
    s, token, api = own
    theirs = os.path.join(s.dir, "deliveryd-keyring")
    shutil.copy(os.path.join(s.dir, "keyring"), theirs)
    s.start_deliveryd(keyring=theirs)
    before = api.send(message(rcpt_with("oldkey")), token).json()["id"]
    api.wait_status(before, token, "sent")
    with open(os.path.join(s.dir, "keyring"), "a") as f:
        f.write("k9 " + base64.b64encode(os.urandom(32)).decode() + "\n")
    subprocess.run([stackmod.NGINX, "-c", s.nginx.conf, "-s", "reload"], check=True, env=s.sanitizer_env(preload=True))
    time.sleep(1)
    ids = [api.send(message(rcpt_with(f"newkey{i}")), token).json()["id"] for i in range(3)]
    time.sleep(3)
    assert all(api.get(m, token).json()["status"] == "queued" for m in ids)  # waiting, not failed
    assert redislib.Redis(port=s.redis.port).xlen("mailapi:dead") == 0
    shutil.copy(os.path.join(s.dir, "keyring"), theirs)  # the rotation reaches deliveryd
    for mid in ids:
        api.wait_status(mid, token, "sent", timeout=30)
    exactly_once(s, [before] + ids)


def test_a_send_whose_record_was_not_written_is_recorded_not_sent_again(own):
    """The crash window: a provider took the message, then deliveryd died
    before its record was written (here the store stalls, then kill -9). The
    next instance finds the SENT marker and records the send."""
    s, token, api = own
    first = s.start_deliveryd(claim_idle="3", send_timeout="2")
    os.kill(s.mongo.popen.pid, signal.SIGSTOP)  # records cannot be written
    try:
        ids = [api.send(message(rcpt_with(f"window{i}")), token).json()["id"] for i in range(5)]
        deadline = time.time() + 15
        while sum(Mailbox(s.maildir).counts().get(m, 0) for m in ids) < 5:
            assert time.time() < deadline, "the relay did not get them"
            time.sleep(0.1)
        r = redislib.Redis(port=s.redis.port)
        assert all(r.hget(f"mailapi:messages:{m}", "sent") for m in ids)  # sent, not recorded
        first.stop(signal.SIGKILL)
    finally:
        os.kill(s.mongo.popen.pid, signal.SIGCONT)
    second = s.start_deliveryd(name="deliveryd2", claim_idle="3", send_timeout="2")
    for mid in ids:
        api.wait_status(mid, token, "sent", timeout=40)
    exactly_once(s, ids)
    assert "sent before it was recorded" in open(second.log).read()


def test_a_give_up_recorded_before_a_crash_still_reaches_the_dead_letters(own):
    """The record says failed (given up), the dead-letter step never ran
    (Redis stopped answering, then kill -9): the takeover dead-letters it,
    instead of acknowledging it away."""
    s, token, api = own
    r = redislib.Redis(port=s.redis.port)
    first = s.start_deliveryd(max_attempts="1", claim_idle="4", send_timeout="2")
    # the relay holds DATA 5 s; after send_timeout the message is given up
    ids = [api.send(message(rcpt_with(f"slow5")), token).json()["id"] for _ in range(3)]
    time.sleep(1)
    os.kill(s.redis.popen.pid, signal.SIGSTOP)
    try:
        deadline = time.time() + 15
        while len([m for m, rec in store_records(s.mongodb_uri, ids).items() if rec["status"] == "failed"]) < 3:
            assert time.time() < deadline, "not given up"
            time.sleep(0.1)
        time.sleep(0.5)
        first.stop(signal.SIGKILL)  # recorded; the dead-letter step waits on Redis
    finally:
        os.kill(s.redis.popen.pid, signal.SIGCONT)
    assert r.xlen("mailapi:dead") == 0 and r.xlen("mailapi:messages") == 3  # work pending at the kill
    s.start_deliveryd(name="deliveryd2", max_attempts="1", claim_idle="4", send_timeout="2")
    deadline = time.time() + 30
    while (r.xlen("mailapi:dead") < 3 or r.xlen("mailapi:messages")) and time.time() < deadline:
        time.sleep(0.2)
    assert r.xlen("mailapi:dead") == 3 and r.xlen("mailapi:messages") == 0
    exactly_once(s, ids, status="failed")


def test_two_instances_never_take_over_a_slow_send(own):
    """Sends longer than claim_idle, with two instances reading: the one
    sending keeps its entries claimed and leases renewed, so the other never
    sends them too."""
    s, token, api = own
    conf = dict(claim_idle="4", send_timeout="3", connections_per_host="2", breaker_cooldown="1")
    a = s.start_deliveryd(name="deliveryd-a", **conf)
    b = s.start_deliveryd(name="deliveryd-b", **conf)
    # slow2: 2 s at DATA, on 2 + 2 connections: a send that waited ~3 s for
    # its connection is held ~5 s, past claim_idle
    ids = [api.send(message(rcpt_with("slow2")), token).json()["id"] for _ in range(16)]
    wait_terminal(s, ids, timeout=90)
    exactly_once(s, ids)
    assert a.alive() and b.alive()


def test_losing_the_group_mid_drain_with_two_instances_sends_nothing_twice(own):
    s, token, api = own
    for name in ("deliveryd-a", "deliveryd-b"):
        s.start_deliveryd(name=name, claim_idle="4", send_timeout="3", connections_per_host="4")
    r = redislib.Redis(port=s.redis.port)
    ids = [api.send(message(rcpt_with("slow1")), token).json()["id"] for _ in range(40)]
    deadline = time.time() + 10
    while sum(Mailbox(s.maildir).counts().get(m, 0) for m in ids) < 4:
        assert time.time() < deadline
        time.sleep(0.1)
    pending = r.xpending("mailapi:messages", "deliveryd")["pending"]
    assert pending > 0 and r.xgroup_destroy("mailapi:messages", "deliveryd") == 1  # with sends under way
    wait_terminal(s, ids, timeout=120)
    exactly_once(s, ids)


def test_redis_killed_with_sends_pending_loses_no_accepted_message(own):
    """kill -9 of Redis while nginx is answering sends and deliveryd is
    draining: every message that got its 202 is delivered, once."""
    s, token, api = own
    s.start_deliveryd(claim_idle="4", send_timeout="3")
    accepted, stop = [], []

    def sender(i):
        a = Api(api.base)
        n = 0
        while not stop:
            try:
                r = a.send(message(f"k{i}-{n}@example.org"), token)
            except Exception:
                r = None
            if r is not None and r.status_code == 202:
                accepted.append(r.json()["id"])
            n += 1
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(sender, i) for i in range(4)]
        deadline = time.time() + 10
        while len(accepted) < 300 and time.time() < deadline:
            time.sleep(0.05)
        port = s.redis.port
        s.redis.stop(signal.SIGKILL)
        time.sleep(1)
        s.start_redis(port=port)
        time.sleep(2)
        stop.append(1)
        for f in futures:
            f.result()
    assert len(accepted) >= 300
    wait_terminal(s, accepted, timeout=120)
    exactly_once(s, accepted)


def test_sigterm_during_a_store_stall_ends_in_time_and_resends_nothing(own):
    """SIGTERM while every record waits on a stalled store: deliveryd exits
    after its grace (it took ~29 s, waiting on the writes), and the next
    instance records what was sent instead of sending it again."""
    s, token, api = own
    first = s.start_deliveryd(shutdown_grace="1", claim_idle="3", send_timeout="2")
    os.kill(s.mongo.popen.pid, signal.SIGSTOP)
    try:
        ids = [api.send(message(rcpt_with(f"term{i}")), token).json()["id"] for i in range(10)]
        deadline = time.time() + 15
        while sum(Mailbox(s.maildir).counts().get(m, 0) for m in ids) < 10:
            assert time.time() < deadline
            time.sleep(0.1)
        t0 = time.time()
        assert first.stop(signal.SIGTERM, timeout=20) == 0
        took = time.time() - t0
    finally:
        os.kill(s.mongo.popen.pid, signal.SIGCONT)
    assert took < 8, f"SIGTERM took {took:.1f} s with shutdown_grace 1"
    s.start_deliveryd(name="deliveryd2", claim_idle="3", send_timeout="2")
    wait_terminal(s, ids, timeout=60)
    exactly_once(s, ids)


def test_a_provider_that_resets_the_connection_fails_over_at_once(tmp_path):
    """The stand-in's reset really resets a keep-alive connection (it used to
    leave it open, so 'reset' tests were tests of a timeout)."""
    import requests
    s, tokens, api = tenants_stack(tmp_path, ("acme",), standin=True)
    try:
        token = tokens["acme"]
        s.start_deliveryd(lines=accounts(s) + ["route * sg, mx"], send_timeout="10", claim_idle="20")
        warm = api.send(message(rcpt_with("warm")), token).json()["id"]  # a kept-alive connection to sg
        api.wait_status(warm, token, "sent")
        control = f"http://127.0.0.1:{s.standin.port}"
        # every request (libcurl itself retries a request once on a fresh
        # connection when a reused one dies before any answer)
        requests.post(f"{control}/_control/sendgrid", json={"mode": "reset", "count": -1}, timeout=5)
        t0 = time.time()
        mid = api.send(message(rcpt_with("reset")), token).json()["id"]
        rec = api.wait_status(mid, token, "sent", timeout=20)
        assert time.time() - t0 < 5  # not send_timeout
        failed = [e for e in rec["events"] if e["type"] == "provider_failed"]
        assert [e["provider"] for e in failed] == ["sg"] and "Timeout" not in failed[0].get("reason", ""), failed
        assert rec["events"][-1]["provider"] == "mx"
        assert Mailbox(s.maildir).count(mid) == 1
    finally:
        s.stop_all()


def test_an_instance_stopped_past_its_lease_does_not_fail_over_to_send_what_was_taken_over(own):
    """SIGSTOP of an instance while its first provider hangs, for longer
    than claim_idle: the other instance takes the messages over and sends
    them. When the stopped one resumes, its first provider has timed out;
    it used to fail over and send each message a second time (no provider
    had taken it before: outside the crash window). Now it asks whether its
    lease is still its own before the next provider, and leaves them."""
    import socket
    s, token, api = own
    r = redislib.Redis(port=s.redis.port)
    hole = socket.socket()  # takes connections, never greets: a send times out after send_timeout
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    try:
        lines = [f"provider hole smtp url=smtp://127.0.0.1:{hole.getsockname()[1]}/mailapi.test",
                 f"provider mx smtp url=smtp://127.0.0.1:{s.smtp.port}/mailapi.test", "route * hole, mx"]
        conf = dict(claim_idle="4", send_timeout="3")
        a = s.start_deliveryd(name="deliveryd-a", lines=lines, **conf)
        ids = [api.send(message(rcpt_with(f"stopped{i}")), token).json()["id"] for i in range(3)]
        wait_owned(r, ids)
        b = s.start_deliveryd(name="deliveryd-b", lines=lines, **conf)
        assert Mailbox(s.maildir).counts() == {}  # all three taken by a, none sent yet
        os.kill(a.popen.pid, signal.SIGSTOP)
        try:
            deadline = time.time() + 20
            while sum(Mailbox(s.maildir).counts().get(m, 0) for m in ids) < 3:  # b took them over
                assert time.time() < deadline, "not taken over"
                time.sleep(0.1)
        finally:
            os.kill(a.popen.pid, signal.SIGCONT)
        wait_terminal(s, ids)
        time.sleep(2)  # a, resumed, has seen its first provider time out
        exactly_once(s, ids)
        assert open(a.log).read().count("lost the lease on a message") == 3
        assert a.alive() and b.alive()
    finally:
        hole.close()


def relay_connections(port):
    """Established TCP connections to a local server's port (/proc/net/tcp)."""
    n = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            n += state == "01" and int(local.split(":")[1], 16) == port
    return n


def wait_owned(r, ids, timeout=10):
    """The consumer that took all of `ids` (its lease on each)."""
    deadline = time.time() + timeout
    while True:
        owners = {r.hget(f"mailapi:messages:{m}", "owner") for m in ids}
        if len(owners) == 1 and None not in owners:
            return owners.pop()
        assert time.time() < deadline, owners
        time.sleep(0.05)


def test_an_instance_stopped_past_its_lease_does_not_record_its_give_up_over_a_send(own):
    """SIGSTOP of an instance while its only provider hangs, past
    claim_idle; another takes the message over and is sending it when the
    stopped one resumes, finds its provider timed out and gives the message
    up. That give-up used to be recorded (failed, dead-lettered) and the
    other's send, a moment later, found the terminal event taken: a message
    delivered once, recorded failed, its dead letter replayable. Now the
    give-up of a lease that may have run out asks Redis first, and DEAD and
    DEFER leave a message whose live lease is another consumer's."""
    import socket
    s, token, api = own
    r = redislib.Redis(port=s.redis.port)
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    try:
        conf = dict(claim_idle="6", send_timeout="5", max_attempts="1")
        a = s.start_deliveryd(name="deliveryd-a", lines=[
            f"provider hole smtp url=smtp://127.0.0.1:{hole.getsockname()[1]}/mailapi.test", "route * hole"], **conf)
        mid = api.send(message(rcpt_with("slow4")), token).json()["id"]  # 4 s at DATA on the real relay
        owner_a = wait_owned(r, [mid])
        b = s.start_deliveryd(name="deliveryd-b", lines=[
            f"provider mx smtp url=smtp://127.0.0.1:{s.smtp.port}/mailapi.test", "route * mx"], **conf)
        os.kill(a.popen.pid, signal.SIGSTOP)
        try:
            deadline = time.time() + 20
            while r.hget(f"mailapi:messages:{mid}", "owner") == owner_a:  # until b takes it over
                assert time.time() < deadline, "not taken over"
                time.sleep(0.1)
            time.sleep(0.5)
            assert Mailbox(s.maildir).count(mid) == 0  # b is sending it (4 s at DATA)
        finally:
            os.kill(a.popen.pid, signal.SIGCONT)
        wait_terminal(s, [mid], timeout=30)
        time.sleep(1)
        exactly_once(s, [mid])
        assert r.xlen("mailapi:dead") == 0
        assert a.alive() and b.alive()
    finally:
        hole.close()


def contract_script(name):
    """A Lua script of common/contract.cpp, as deliveryd runs it."""
    import re
    with open(os.path.join(stackmod.ROOT, "common", "contract.cpp")) as f:
        m = re.search(r'extern const char ' + name + r'\[\] = R"lua\((.*?)\)lua";', f.read(), re.S)
    return m.group(1)


def test_defer_and_dead_leave_a_message_another_consumer_holds(own):
    """What a consumer whose lease was taken over does last (a retry or a
    give-up it decided before it knew) changes nothing of the message while
    the new holder's lease is live: DEFER used to free that lease and
    schedule the message (sent again when it came due), DEAD to dead-letter
    it under the new holder's send. A lease that ran out (its holder died)
    does not stop them."""
    s, token, api = own
    r = redislib.Redis(port=s.redis.port)
    defer, dead = r.register_script(contract_script("DEFER_LUA")), r.register_script(contract_script("DEAD_LUA"))
    now = int(time.time() * 1000)
    r.xgroup_create("mailapi:messages", "deliveryd", id="0", mkstream=True)
    for mid, lease in (("msg_live", now + 60000), ("msg_ran_out", now - 1)):
        r.hset(f"mailapi:messages:{mid}", mapping={"tenant": "acme", "env": "x", "owner": "b", "lease": lease})
        r.xadd("mailapi:messages", {"id": mid})
    entries = {f[b"id"].decode(): e.decode() for e, f in
               r.xreadgroup("deliveryd", "b", {"mailapi:messages": ">"})[0][1]}

    def run_defer(mid):
        return defer(keys=["mailapi:messages", "mailapi:scheduled", f"mailapi:messages:{mid}"],
                     args=["deliveryd", entries[mid], now + 1000, 1, mid, "", "a"])

    def run_dead(mid):
        return dead(keys=["mailapi:messages", "mailapi:dead"],
                    args=["deliveryd", entries[mid], 100, "", "a", "id", mid, "tenant", "acme", "error", "x"])
    assert run_defer("msg_live") == 0 and run_dead("msg_live") == -1
    assert r.hget("mailapi:messages:msg_live", "owner") == b"b" and r.zcard("mailapi:scheduled") == 0
    assert r.xlen("mailapi:dead") == 0 and r.xlen("mailapi:messages") == 2
    assert r.xpending("mailapi:messages", "deliveryd")["pending"] == 2  # b's entries still b's
    assert run_dead("msg_ran_out") == 0
    assert r.xlen("mailapi:dead") == 1 and r.xlen("mailapi:messages") == 1
    assert r.hget("mailapi:messages:msg_ran_out", "owner") is None


def test_a_message_size_the_store_cannot_keep_is_refused_by_nginx_t(tmp_path):
    """mail_api_max_message_size 20m took a 17 MiB message with a 202, sent
    it, and its record (the envelope is one document) was refused by the
    store ('Document ... is too large ... max is 16777216') every second for
    ever: never a terminal record, and every batch of records it joined
    failed with it. Now nginx -t refuses more than 15m; at 15m a message of
    the limit's size is recorded, once."""
    import json
    import requests
    s, tokens, api = tenants_stack(tmp_path, ("acme",))
    try:
        ok, out = s.nginx_test(s.render_nginx(stackmod.free_port(), name="nginx-20m", client_max_body_size="24m",
                                              extra_http="    mail_api_max_message_size 20m;\n"))
        assert not ok and '"mail_api_max_message_size" must be at most 15m' in out, out
        big = s.start_nginx(name="nginx-15m", client_max_body_size="16m",
                            extra_http="    mail_api_max_message_size 15m;\n")
        s.start_deliveryd()
        body = json.dumps(message(rcpt_with("large")))
        body = body[:-1] + " " * ((15 << 20) - len(body)) + "}"  # whitespace: JSON as large as allowed
        assert len(body) == 15 << 20
        r = requests.post(f"http://127.0.0.1:{big.port}/v1/messages", data=body, timeout=60,
                          headers={"Authorization": "Bearer " + tokens["acme"], "Content-Type": "application/json"})
        assert r.status_code == 202, r.text
        mid = r.json()["id"]
        wait_terminal(s, [mid], timeout=60)
        exactly_once(s, [mid])
    finally:
        s.stop_all()


def test_a_key_rotation_that_retires_the_oldest_key_reaches_deliveryd(own):
    """A rotation that adds a key and retires the oldest leaves the keyring
    as long as it was: deliveryd, reading its keyring again for a message
    sealed with a key id it lacks, took a keyring of the same size for the
    same keyring, and the message waited (until max_age, then failed)."""
    import base64
    import shutil
    s, token, api = own
    ring = os.path.join(s.dir, "keyring")
    index = next(line for line in open(ring) if line.startswith("index "))

    def key(kid):
        return f"{kid} " + base64.b64encode(os.urandom(32)).decode() + "\n"
    k1, k2, k3 = key("k1"), key("k2"), key("k3")
    with open(ring, "w") as f:
        f.write(index + k1 + k2)
    subprocess.run([stackmod.NGINX, "-c", s.nginx.conf, "-s", "reload"], check=True, env=s.sanitizer_env(preload=True))
    theirs = os.path.join(s.dir, "deliveryd-keyring")
    shutil.copy(ring, theirs)
    s.start_deliveryd(keyring=theirs)
    time.sleep(1)
    before = api.send(message(rcpt_with("k2")), token).json()["id"]
    api.wait_status(before, token, "sent")
    with open(ring, "w") as f:  # k3 seals from now on; k1 retired
        f.write(index + k2 + k3)
    subprocess.run([stackmod.NGINX, "-c", s.nginx.conf, "-s", "reload"], check=True, env=s.sanitizer_env(preload=True))
    time.sleep(1)
    ids = [api.send(message(rcpt_with(f"k3-{i}")), token).json()["id"] for i in range(3)]
    time.sleep(3)
    assert all(api.get(m, token).json()["status"] == "queued" for m in ids)  # waiting for k3
    shutil.copy(ring, theirs)  # the rotation reaches deliveryd
    for mid in ids:
        api.wait_status(mid, token, "sent", timeout=30)
    exactly_once(s, [before] + ids)


CLOCK_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
/* The wall clock CLOCK_OFFSET_S seconds off (the monotonic clock as it is). */
static long offset(void) {
    const char *s = getenv("CLOCK_OFFSET_S");
    return s ? atol(s) : 0;
}
int clock_gettime(clockid_t c, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int r = real(c, ts);
    if (r == 0 && (c == CLOCK_REALTIME || c == CLOCK_REALTIME_COARSE)) ts->tv_sec += offset();
    return r;
}
int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    (void)tz;
    clock_gettime(CLOCK_REALTIME, &ts);
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = ts.tv_nsec / 1000;
    return 0;
}
time_t time(time_t *t) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (t) *t = ts.tv_sec;
    return ts.tv_sec;
}
"""


def clock_off(tmp_path, seconds):
    """Environment for a process whose wall clock is `seconds` off (an LD_PRELOAD shim)."""
    src, lib = tmp_path / "clock_shim.c", tmp_path / "clock_shim.so"
    src.write_text(CLOCK_SHIM)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(lib), str(src), "-ldl"], check=True)
    preload = str(lib)
    if stackmod.SANITIZE:  # the ASan runtime must come first
        asan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
        preload = asan + " " + preload
    return {"LD_PRELOAD": preload, "CLOCK_OFFSET_S": str(seconds)}


def test_a_lease_taken_by_an_instance_whose_clock_is_ahead_runs_out_in_redis_time(own, tmp_path):
    """Leases were stamped with the taker's wall clock: an instance an hour
    ahead that died holding messages left leases that the others read as
    live for an hour more, and the messages waited that long (here they
    stayed queued). Now TAKE and RENEW stamp leases with Redis's clock, and
    an instance's clock no longer decides when another may take over."""
    import socket
    s, token, api = own
    r = redislib.Redis(port=s.redis.port)
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    try:
        conf = dict(claim_idle="4", send_timeout="3")
        a = s.start_deliveryd(name="deliveryd-a", env=clock_off(tmp_path, 3600), lines=[
            f"provider hole smtp url=smtp://127.0.0.1:{hole.getsockname()[1]}/mailapi.test", "route * hole"], **conf)
        ids = [api.send(message(rcpt_with(f"ahead{i}")), token).json()["id"] for i in range(3)]
        wait_owned(r, ids)  # a holds them, sending to a relay that never answers
        a.stop(signal.SIGKILL)
        assert r.xpending("mailapi:messages", "deliveryd")["pending"] == 3
        s.start_deliveryd(name="deliveryd-b", lines=[
            f"provider mx smtp url=smtp://127.0.0.1:{s.smtp.port}/mailapi.test", "route * mx"], **conf)
        wait_terminal(s, ids, timeout=30)
        exactly_once(s, ids)
    finally:
        hole.close()


def test_a_sent_marker_that_redis_was_down_for_is_written_once_it_is_back(own):
    """A provider takes the message while Redis is down (killed -9) and the
    store stalls: SENT failed and was never tried again, so the send's only
    trace was a record waiting on the store. deliveryd killed -9 then (Redis
    back, the store still stalled) left nothing, and the next instance sent
    the message again, though Redis had been back for seconds. Now the
    marker is written again until Redis takes it (or the message is done)."""
    s, token, api = own
    r = redislib.Redis(port=s.redis.port)
    a = s.start_deliveryd(claim_idle="4", send_timeout="3")
    ids = [api.send(message(rcpt_with("slow2")), token).json()["id"] for _ in range(3)]  # 2 s at DATA
    wait_owned(r, ids)
    # Redis goes only once the sends are at the relay: under ASan and load
    # all three were once still before their connection (whence a send must
    # renew its lease first) when it went, and the relay got none.
    deadline = time.time() + 10
    while relay_connections(s.smtp.port) < 2:
        assert time.time() < deadline, "deliveryd did not connect to the relay"
        time.sleep(0.02)
    port = s.redis.port
    os.kill(s.mongo.popen.pid, signal.SIGSTOP)  # no record can be written
    try:
        s.redis.stop(signal.SIGKILL)
        s.procs.remove(s.redis)
        deadline = time.time() + 10
        # The relay takes them while Redis is down: at least two (a send that
        # got its connection late must renew its lease first, which it cannot
        # while Redis is down; that one is sent later, once, by deliveryd2).
        while sum(Mailbox(s.maildir).counts().get(m, 0) for m in ids) < 2:
            assert time.time() < deadline, "the relay did not get them"
            time.sleep(0.1)
        time.sleep(2.5)
        s.start_redis(port=port)
        r = redislib.Redis(port=port)
        time.sleep(3)  # Redis back for a while
        assert r.xpending("mailapi:messages", "deliveryd")["pending"] == 3  # unfinished: not recorded
        a.stop(signal.SIGKILL)
    finally:
        os.kill(s.mongo.popen.pid, signal.SIGCONT)
    s.start_deliveryd(name="deliveryd2", claim_idle="4", send_timeout="3")
    wait_terminal(s, ids, timeout=40)
    exactly_once(s, ids)


def relay_that_never_answers_quit():
    """An SMTP relay that takes mail (into `taken`) but never answers QUIT,
    as a hung relay, or a kept connection a firewall has dropped, does."""
    import socket
    import threading
    class Relay(socket.socket):
        taken = None
    srv = Relay()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.taken = []

    def serve(c):
        with c, c.makefile("rb") as f:
            c.sendall(b"220 mute ESMTP\r\n")
            in_data = False
            for line in f:
                if in_data:
                    if line == b".\r\n":
                        in_data = False
                        srv.taken.append(1)
                        c.sendall(b"250 queued\r\n")
                elif line[:4].upper() == b"DATA":
                    in_data = True
                    c.sendall(b"354 go on\r\n")
                elif line[:4].upper() != b"QUIT":  # QUIT: silence
                    c.sendall(b"250 ok\r\n")

    def accept():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()
    return srv


def test_a_reload_that_drops_a_relay_that_never_answers_quit_does_not_stall_deliveryd(own):
    """A SIGHUP that removed (or changed) an SMTP provider joined its pool's
    threads on the event loop, and each closed its kept connection with
    QUIT, waiting for the answer: 120 s (libcurl's default) with a relay
    that no longer answers, the whole daemon stalled (no sends, no lease
    renewed, so other instances took its messages over). The same at exit,
    after SIGTERM. Now the pool drops such a connection without QUIT."""
    s, token, api = own
    mute = relay_that_never_answers_quit()
    try:
        lines = [f"provider mute smtp url=smtp://127.0.0.1:{mute.getsockname()[1]}/mailapi.test",
                 f"provider mx smtp url=smtp://127.0.0.1:{s.smtp.port}/mailapi.test"]
        dd = s.start_deliveryd(lines=lines + ["route * mute"])
        first = api.send(message(rcpt_with("mute")), token).json()["id"]
        api.wait_status(first, token, "sent")  # its connection to the relay is kept
        assert len(mute.taken) == 1
        s.write_deliveryd_conf(dd.conf, [lines[1], "route * mx"], admin_listen=dd.admin[len("http://"):])
        t0 = time.time()
        dd.popen.send_signal(signal.SIGHUP)
        wait_log(dd, '"msg":"reloaded"', timeout=60)
        assert time.time() - t0 < 3, f"the reload took {time.time() - t0:.0f} s"
        after = api.send(message(rcpt_with("after")), token).json()["id"]
        api.wait_status(after, token, "sent", timeout=5)
        exactly_once(s, [after])

        other = s.start_deliveryd(name="deliveryd2", lines=lines + ["route * mute"])
        dd.stop(signal.SIGTERM)
        last = api.send(message(rcpt_with("mute")), token).json()["id"]
        api.wait_status(last, token, "sent")
        assert len(mute.taken) == 2
        t0 = time.time()
        assert other.stop(signal.SIGTERM, timeout=60) == 0
        assert time.time() - t0 < 5, f"SIGTERM took {time.time() - t0:.0f} s"
    finally:
        mute.close()


def test_a_large_message_is_not_starved_by_a_flow_of_small_ones(own):
    """A message too large to share max_in_flight_bytes waits until nothing
    else is under way; smaller ones read meanwhile went ahead of it as long
    as they fitted, so a steady flow of them kept it waiting for as long as
    the flow lasted (here: still queued after 15 s), and past max_age it
    was failed without a try. Now the waiting ones go first come, first
    served."""
    import base64
    import threading
    s, token, api = own
    s.start_deliveryd(max_in_flight_bytes="1m", send_timeout="5", claim_idle="10")
    stop, small = [], []

    def flow():  # one every 0.1 s, each 1 s at the relay: always some under way
        c = Api(api.base)
        while not stop:
            small.append(c.send(message(rcpt_with("slow1")), token).json()["id"])
            time.sleep(0.1)
    th = threading.Thread(target=flow)
    th.start()
    try:
        time.sleep(2)
        att = base64.b64encode(os.urandom(600 * 1024)).decode()  # ~0.8 MB sealed, counted twice: alone only
        big = api.send(message(rcpt_with("large"), attachments=[{"filename": "b.bin", "content": att}]),
                       token).json()["id"]
        api.wait_status(big, token, "sent", timeout=8)
        assert not stop and th.is_alive()  # the flow still going
    finally:
        stop.append(1)
        th.join()
    wait_terminal(s, small + [big], timeout=60)
    exactly_once(s, small + [big])
