"""The SMTP provider against relays that want TLS and AUTH: STARTTLS,
implicit TLS (smtps), credentials, certificate checks; a relay that refuses
us is the relay's trouble (failover), not the message's."""
import pytest

from conftest import Mailbox, message, private_stack


@pytest.fixture
def relay_stack(tmp_path):
    s, token, api = private_stack(tmp_path)
    secret = tmp_path / "relay.password"
    secret.write_text("s3cret pass\n")
    yield s, token, api, str(secret)
    s.stop_all()


def fallback(s):
    return f"provider fallback smtp url=smtp://127.0.0.1:{s.smtp.port}/mailapi.test"


@pytest.mark.parametrize("tls, scheme, starttls", [("starttls", "smtp", "yes"), ("implicit", "smtps", "no")])
def test_tls_and_auth_relay_gets_the_mail(relay_stack, tls, scheme, starttls):
    s, token, api, secret = relay_stack
    relay = s.start_smtp(name="relay", tls=tls, auth="mailer:s3cret pass")
    cert, _ = s.certificate()
    s.start_deliveryd(lines=[
        f"provider relay smtp url={scheme}://127.0.0.1:{relay.port}/mailapi.test starttls={starttls} "
        f"username=mailer password_file={secret} cacert={cert}", fallback(s), "route * relay, fallback"])
    mid = api.send(message("tls@example.org"), token).json()["id"]
    rec = api.wait_status(mid, token, "sent")
    assert [e.get("provider") for e in rec["events"]] == [None, "relay"]
    assert Mailbox(relay.maildir).count(mid) == 1 and Mailbox(s.maildir).count(mid) == 0


@pytest.mark.parametrize("change, reason", [
    ("username=mailer password=wrong", "535 5.7.8"),           # our credentials, in the relay's words
    ("password_file=SECRET", "530"),                            # no username: 530 authentication required
    ("username=mailer password_file=SECRET NOCA", "certificate"),  # self-signed, not trusted
    ("username=mailer password_file=SECRET NOTLS", "530"),      # relay requires STARTTLS
])
def test_a_relay_that_refuses_us_fails_over(relay_stack, change, reason):
    s, token, api, secret = relay_stack
    relay = s.start_smtp(name="relay", tls="starttls", auth="mailer:s3cret pass")
    cert, _ = s.certificate()
    opts = change.replace("SECRET", secret)
    opts = opts.replace(" NOCA", "") if "NOCA" in opts else opts + f" cacert={cert}"
    starttls = "no" if "NOTLS" in opts else "yes"
    opts = opts.replace(" NOTLS", "")
    s.start_deliveryd(lines=[
        f"provider relay smtp url=smtp://127.0.0.1:{relay.port}/mailapi.test starttls={starttls} {opts}",
        fallback(s), "route * relay, fallback"])
    mid = api.send(message("refused-us@example.org"), token).json()["id"]
    rec = api.wait_status(mid, token, "sent")
    failed = rec["events"][1]
    assert (failed["type"], failed["provider"]) == ("provider_failed", "relay"), rec["events"]
    assert reason.lower() in (failed["reason"] + " " + str(failed.get("code", ""))).lower(), failed
    assert rec["events"][-1]["provider"] == "fallback"
    assert Mailbox(relay.maildir).count(mid) == 0 and Mailbox(s.maildir).count(mid) == 1
