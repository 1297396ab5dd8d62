"""Provider accounts, routes per tenant, weighted pools, and reloading them
with SIGHUP, through nginx and deliveryd against the SMTP server and the
stand-in for the hosted APIs."""
import os
import signal
import subprocess
import time

import pytest
import requests

import stack as stackmod
from conftest import Mailbox, message, standin_deliveries, tenants_stack


@pytest.fixture
def two_tenants(tmp_path):
    """A stack whose nginx knows keys of two tenants; deliveryd is left to the test."""
    s, tokens, api = tenants_stack(tmp_path, ("acme", "globex"), standin=True)
    yield s, tokens, api, f"http://127.0.0.1:{s.standin.port}"
    s.stop_all()


def accounts(s):
    """Provider lines for the stand-in's accounts and the SMTP server."""
    base = f"http://127.0.0.1:{s.standin.port}"
    return [f"provider sg sendgrid url={base} api_key={s.standin_keys['sendgrid']}",
            f"provider hook http url={base}/generic token={s.standin_keys['http']}",
            f"provider mx smtp url=smtp://127.0.0.1:{s.smtp.port}/mailapi.test"]


def providers_of(api, token, ids, timeout=30):
    """Which provider sent each message, from its record."""
    out = {}
    for mid in ids:
        rec = api.wait_status(mid, token, "sent", timeout=timeout)
        out[mid] = rec["events"][-1]["provider"]
    return out


def check_config(tmp_path, lines, **overrides):
    """deliveryd --check-config on these settings (no servers needed)."""
    s = stackmod.Stack(str(tmp_path))
    s.redis = s.mongo = s.smtp = type("P", (), {"port": 1})()
    s.add_key("k", "acme")  # writes the keyring
    path = os.path.join(s.dir, "check.conf")
    s.write_deliveryd_conf(path, lines, **overrides)
    return subprocess.run([stackmod.DELIVERYD, "-c", path, "--check-config"], capture_output=True, text=True,
                          timeout=10)


def test_each_tenant_goes_through_its_own_route(two_tenants):
    s, tokens, api, control = two_tenants
    s.start_deliveryd(lines=accounts(s) + ["route * mx", "route globex sg, mx"])
    acme = [api.send(message(f"a{i}@example.org"), tokens["acme"]).json()["id"] for i in range(3)]
    globex = [api.send(message(f"g{i}@example.org"), tokens["globex"]).json()["id"] for i in range(3)]
    assert set(providers_of(api, tokens["acme"], acme).values()) == {"mx"}
    assert set(providers_of(api, tokens["globex"], globex).values()) == {"sg"}
    counts = Mailbox(s.maildir).counts()
    assert all(counts.get(m) == 1 for m in acme) and not any(counts.get(m) for m in globex)
    by_sg = standin_deliveries(control, "sendgrid")
    assert all(by_sg.get(m) == 1 for m in globex) and not any(by_sg.get(m) for m in acme)
    # globex's fallback is still there: with sg failing, its mail goes out by SMTP
    requests.post(f"{control}/_control/sendgrid", json={"status": 503, "count": -1}, timeout=5)
    mid = api.send(message("g-fallback@example.org"), tokens["globex"]).json()["id"]
    rec = api.wait_status(mid, tokens["globex"], "sent")
    assert [(e["type"], e.get("provider")) for e in rec["events"]] == [
        ("queued", None), ("provider_failed", "sg"), ("sent", "mx")]
    assert Mailbox(s.maildir).count(mid) == 1


def test_a_weighted_pool_shares_the_load(two_tenants):
    s, tokens, api, control = two_tenants
    s.start_deliveryd(lines=accounts(s) + ["route * sg:3|hook:1, mx"])
    ids = [api.send(message(f"w{i}@example.org"), tokens["acme"]).json()["id"] for i in range(80)]
    by = providers_of(api, tokens["acme"], ids, timeout=60)
    used = list(by.values())
    # Binomial(80, 0.75): 60 expected; 45..75 is more than 3.5 standard deviations
    assert 45 <= used.count("sg") <= 75 and used.count("sg") + used.count("hook") == 80, used
    assert Mailbox(s.maildir).counts() == {}  # the pool never needed its fallback
    # each message went to the one member its record names, once
    by_sg, by_hook = standin_deliveries(control, "sendgrid"), standin_deliveries(control, "generic")
    assert all((by_sg.get(m, 0), by_hook.get(m, 0)) == ((1, 0) if by[m] == "sg" else (0, 1)) for m in ids)


def test_a_failing_pool_member_hands_over_to_the_other(two_tenants):
    s, tokens, api, control = two_tenants
    requests.post(f"{control}/_control/sendgrid", json={"status": 500, "count": -1}, timeout=5)
    s.start_deliveryd(lines=accounts(s) + ["route * sg|hook, mx"], breaker_min_requests="1000")
    ids = [api.send(message(f"p{i}@example.org"), tokens["acme"]).json()["id"] for i in range(20)]
    for mid in ids:
        rec = api.wait_status(mid, tokens["acme"], "sent", timeout=30)
        steps = [(e["type"], e.get("provider")) for e in rec["events"]]
        assert steps in ([("queued", None), ("sent", "hook")],
                         [("queued", None), ("provider_failed", "sg"), ("sent", "hook")]), steps
    assert Mailbox(s.maildir).counts() == {}
    by_hook = standin_deliveries(control, "generic")
    assert all(by_hook.get(m) == 1 for m in ids), by_hook


def test_sighup_reloads_providers_and_routes(two_tenants):
    s, tokens, api, control = two_tenants
    dd = s.start_deliveryd(lines=accounts(s) + ["route * mx"])
    first = api.send(message("before@example.org"), tokens["acme"]).json()["id"]
    assert providers_of(api, tokens["acme"], [first])[first] == "mx"

    s.write_deliveryd_conf(dd.conf, accounts(s) + ["route * sg, mx"], admin_listen=dd.admin[len("http://"):])
    dd.popen.send_signal(signal.SIGHUP)
    wait_log(dd, '"msg":"reloaded"')
    second = api.send(message("after@example.org"), tokens["acme"]).json()["id"]
    assert providers_of(api, tokens["acme"], [second])[second] == "sg"
    assert Mailbox(s.maildir).count(second) == 0 and standin_deliveries(control, "sendgrid").get(second) == 1

    # a broken file is refused and the running configuration stays
    with open(dd.conf, "a") as f:
        f.write("route globex nosuch\n")
    dd.popen.send_signal(signal.SIGHUP)
    wait_log(dd, '"msg":"reload failed')
    assert "nosuch" in dd.log_tail(5)
    third = api.send(message("still@example.org"), tokens["acme"]).json()["id"]
    assert providers_of(api, tokens["acme"], [third])[third] == "sg"

    # settings that need new connections are refused, not half-applied
    s.write_deliveryd_conf(dd.conf, accounts(s) + ["route * mx"], admin_listen=dd.admin[len("http://"):],
                           stream="other:stream")
    dd.popen.send_signal(signal.SIGHUP)
    wait_log(dd, "need a restart")
    fourth = api.send(message("stream@example.org"), tokens["acme"]).json()["id"]
    assert providers_of(api, tokens["acme"], [fourth])[fourth] == "sg"
    assert dd.alive()


def test_sighup_keeps_an_unchanged_providers_open_circuit(two_tenants):
    s, tokens, api, control = two_tenants
    lines = accounts(s) + ["route * sg, mx"]
    requests.post(f"{control}/_control/sendgrid", json={"status": 500, "count": -1}, timeout=5)
    dd = s.start_deliveryd(lines=lines, breaker_min_requests="3", breaker_window="3", breaker_cooldown="600")
    ids = [api.send(message(f"c{i}@example.org"), tokens["acme"]).json()["id"] for i in range(4)]
    providers_of(api, tokens["acme"], ids)
    assert 'breaker_state{provider="sg"} 1' in requests.get(dd.admin + "/metrics", timeout=5).text
    s.write_deliveryd_conf(dd.conf, lines + ["route globex mx"], breaker_min_requests="3", breaker_window="3",
                           breaker_cooldown="600", admin_listen=dd.admin[len("http://"):])
    dd.popen.send_signal(signal.SIGHUP)
    wait_log(dd, '"msg":"reloaded"')
    metrics = requests.get(dd.admin + "/metrics", timeout=5).text
    assert 'breaker_state{provider="sg"} 1' in metrics  # still open: sg's settings did not change
    before = requests.get(f"{control}/_requests/sendgrid", timeout=5).json()["count"]
    mid = api.send(message("open@example.org"), tokens["acme"]).json()["id"]
    assert providers_of(api, tokens["acme"], [mid])[mid] == "mx"
    assert requests.get(f"{control}/_requests/sendgrid", timeout=5).json()["count"] == before


def wait_log(proc, needle, timeout=10):
    deadline = time.time() + timeout
    while needle not in proc.log_tail(50):
        assert time.time() < deadline, f"{needle!r} not in {proc.log}:\n{proc.log_tail(20)}"
        time.sleep(0.05)


@pytest.mark.parametrize("lines, overrides, error", [
    (["provider a carrierpigeon"], {}, 'unknown type "carrierpigeon"'),
    (["provider a sendgrid url=https://api.sendgrid.com", "route * a"], {}, "needs api_key"),
    (["provider a sendgrid api_key=x colour=blue", "route * a"], {}, 'no setting "colour"'),
    (["provider a sendgrid api_key=x url=ftp://x", "route * a"], {}, "url must start with http"),
    (["provider a mailgun api_key=x", "route * a"], {}, "needs domain"),
    (["provider a ses region=eu-west-1 access_key_id=AKIA", "route * a"], {}, "needs secret_access_key"),
    (["provider a smtp rate=fast", "route * a"], {}, "rate must be"),
    (["provider a smtp", "provider a smtp", "route * a"], {}, "defined twice"),
    (["provider a sendgrid SG.secret", "route * a"], {}, "field 4 is not key=value"),
    (["provider a smtp password_file=/nonexistent", "route * a"], {}, "cannot read /nonexistent"),
    (["provider a smtp api_key_file=/etc/hostname", "route * a"], {}, 'no setting "api_key"'),
    (["route * nosuch"], {}, 'provider "nosuch", which no provider line defines'),
    (["provider a smtp", "route * a:0"], {}, "weight of a:0 must be"),
    (["provider a smtp", "route * a,,a"], {}, "empty step"),
    (["provider a smtp", "route * a|b/c"], {}, '"b/c" is not a provider name'),
    (["provider a smtp", "route acme a"], {}, "no route for the other tenants"),
    (["provider a smtp", "route bad/tenant a"], {}, "tenant must be"),
    ([], {"providers": "sendgrid"}, "needs api_key"),
])
def test_check_config_explains_bad_provider_settings(tmp_path, lines, overrides, error):
    r = check_config(tmp_path, lines, **overrides)
    assert r.returncode == 1 and error in r.stderr, r.stderr
    assert "SG.secret" not in r.stderr  # a stray value is not echoed


def test_check_config_accepts_every_provider_type(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    lines = ["provider mx smtp url=smtps://mail.example.com:465 username=u password_file=" + str(secret),
             "provider sg sendgrid api_key_file=" + str(secret) + " rate=100 burst=200 concurrency=8",
             "provider mg mailgun domain=mg.example.com api_key=k url=https://api.eu.mailgun.net",
             "provider pm postmark server_token=t message_stream=outbound",
             "provider aws ses region=eu-west-1 access_key_id=AKIAX secret_access_key_file=" + str(secret),
             "provider hook http url=https://hooks.example.com/mail",
             "route * sg:3|mg:1, aws, mx", "route acme pm, hook"]
    r = check_config(tmp_path, lines)
    assert r.returncode == 0, r.stderr
    # what will be used, without secrets: the unused "pm"/"hook" only on acme's route
    assert "  route *: sg:3|mg, aws, mx\n" in r.stdout and "  route acme: pm, hook\n" in r.stdout, r.stdout
    assert "  provider aws: ses https://email.eu-west-1.amazonaws.com\n" in r.stdout
    assert "s3cret" not in r.stdout and "AKIAX" not in r.stdout


@pytest.mark.parametrize("concurrency", [1, 0])
def test_a_providers_concurrency_cap(two_tenants, concurrency):
    s, tokens, api, control = two_tenants
    mx = f"provider mx smtp url=smtp://127.0.0.1:{s.smtp.port}/mailapi.test concurrency={concurrency}"
    s.start_deliveryd(lines=[mx, "route * mx"])
    ids = [api.send(message(f"slow1+cap{i}@example.org"), tokens["acme"]).json()["id"] for i in range(4)]
    providers_of(api, tokens["acme"], ids, timeout=30)
    inbox = Mailbox(s.maildir)
    seen = [int(inbox.find(mid)["X-Test-Concurrent-Data"]) for mid in ids]
    assert all(inbox.count(mid) == 1 for mid in ids)
    if concurrency == 1:
        assert seen == [1, 1, 1, 1]
    else:  # the control: unlimited, the SMTP server sees them at once
        assert max(seen) > 1, seen


def test_sends_waiting_for_a_hung_providers_connection_fail_over(two_tenants):
    s, tokens, api, control = two_tenants
    requests.post(f"{control}/_control/sendgrid", json={"mode": "timeout", "count": -1}, timeout=5)
    sg, _, mx = accounts(s)
    s.start_deliveryd(lines=[sg + " concurrency=1", mx, "route * sg, mx"], breaker_min_requests="1000")
    ids = [api.send(message(f"hung{i}@example.org"), tokens["acme"]).json()["id"] for i in range(3)]
    reasons = []
    for mid in ids:
        rec = api.wait_status(mid, tokens["acme"], "sent", timeout=15)  # send_timeout 4 s each, not 3 x 4 s
        failed = rec["events"][1]
        assert (failed["type"], failed["provider"], rec["events"][-1]["provider"]) == (
            "provider_failed", "sg", "mx"), rec["events"]
        reasons.append(failed["reason"])
    # the first held the only connection until curl's timeout; of the two
    # behind it, whichever's wait ran out first was never tried, the other
    # may have got the connection as the first let go of it
    assert "no free connection within send_timeout" in reasons, reasons
    assert all(r in ("Timeout was reached", "no free connection within send_timeout") for r in reasons), reasons
    assert requests.get(f"{control}/_requests/sendgrid", timeout=5).json()["count"] <= 2
    counts = Mailbox(s.maildir).counts()
    assert all(counts.get(m) == 1 for m in ids), counts


def test_cleartext_credentials_are_warned_about(two_tenants):
    s, tokens, api, control = two_tenants
    dd = s.start_deliveryd(lines=accounts(s) + [
        "provider far sendgrid url=http://192.0.2.1 api_key=k",  # TEST-NET: never reached
        "provider relay smtp url=smtp://192.0.2.2 username=u password=p",
        "provider safe smtp url=smtp://192.0.2.3 username=u password=p starttls=yes",
        "route * sg, mx", "route globex far, relay, safe"])
    log = dd.log_tail(50)
    warned = [line for line in log.splitlines() if "unencrypted" in line]
    assert len(warned) == 2 and '"provider":"far"' in warned[0] + warned[1] and '"provider":"relay"' in "".join(warned)
    assert '"k"' not in log and "password" not in log  # names, never secrets
