"""Tokens: every way a token can be wrong has its own error, and none of them
enqueues anything."""
import base64
import subprocess
import time

import pytest

import stack as stackmod
from conftest import message


def tampered(token):
    return token[:-1] + ("A" if token[-1] != "A" else "B")


CASES = {
    "missing": (None, "token_missing"),
    "not bearer": ("Basic Zm9vOmJhcg==", "token_missing"),
    "garbage": ("Bearer garbage", "token_malformed"),
    "truncated": ("Bearer {truncated}", "token_malformed"),
    "forged signature": ("Bearer {forged}", "token_signature_invalid"),
    "other key's secret": ("Bearer {other_secret}", "token_signature_invalid"),
    "tampered scopes": ("Bearer {scope_swap}", "token_signature_invalid"),
    "expired": ("Bearer {expired}", "token_expired"),
    "future dated": ("Bearer {future}", "token_lifetime_exceeded"),
    "unknown key": ("Bearer {unknown}", "token_unknown_key"),
    "unsupported version": ("Bearer {v2}", "token_version_unsupported"),
}


@pytest.fixture
def tokens(keys):
    k = keys["acme_full"]
    full = k.token()
    now = int(time.time())
    return {
        "full": full,
        "truncated": full[:-5],
        "forged": tampered(full),
        "other_secret": stackmod.mint_token(k.id, keys["globex_full"].secret),
        "scope_swap": k.token(scopes="send").replace(".send.", ".read."),
        "expired": k.token(expires=now - 120),
        "future": k.token(expires=now + 30 * 86400),
        "unknown": stackmod.mint_token("nobody", k.secret),
        "v2": "v2" + full[2:],
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_tokens_are_refused_and_change_nothing(api, tokens, case, rcpt, enqueued):
    template, code = CASES[case]
    headers = {}
    if template:
        headers["Authorization"] = template.format(**tokens)
    before = enqueued()
    r = api.http.post(api.base + "/v1/messages", json=message(rcpt), headers=headers, timeout=10)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["message"]
    assert r.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert enqueued() == before
    # the same on the read side
    r = api.http.post(api.base + "/v1/messages/search", json={"recipient": rcpt}, headers=headers, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == code


def test_token_exchange(api, keys, rcpt):
    k = keys["acme_full"]
    basic = base64.b64encode(f"{k.id}:{k.secret_b64}".encode()).decode()
    r = api.http.post(api.base + "/v1/tokens", json={"ttl": 600, "scopes": ["send"]},
                      headers={"Authorization": "Basic " + basic})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["token"].startswith(f"v1.{k.id}.") and body["scopes"] == "send"
    assert body["expires_at"].endswith("Z")
    assert api.send(message(rcpt), body["token"]).status_code == 202
    assert api.list(rcpt, body["token"]).status_code == 403  # only what was asked for

    wrong = base64.b64encode(f"{k.id}:{keys['globex_full'].secret_b64}".encode()).decode()
    r = api.http.post(api.base + "/v1/tokens", json={}, headers={"Authorization": "Basic " + wrong})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_credentials"
    r = api.http.post(api.base + "/v1/tokens", json={"ttl": 10 ** 9}, headers={"Authorization": "Basic " + basic})
    assert r.status_code == 422 and r.json()["error"]["field"] == "ttl"
    ro = keys["acme_read"]
    ro_basic = base64.b64encode(f"{ro.id}:{ro.secret_b64}".encode()).decode()
    r = api.http.post(api.base + "/v1/tokens", json={"scopes": ["send"]}, headers={"Authorization": "Basic " + ro_basic})
    assert r.status_code == 403 and r.json()["error"]["field"] == "scopes[0]"


def test_cli_mints_tokens_nginx_accepts(api, keys, rcpt):
    k = keys["acme_send"]
    out = subprocess.run([stackmod.TOKEN_CLI, "--key-id", k.id, "--scopes", "send", "--ttl", "300"],
                         env={"MAILAPI_SECRET": k.secret_b64}, capture_output=True, text=True, check=True)
    token = out.stdout.strip()
    assert api.send(message(rcpt), token).status_code == 202
    bad = subprocess.run([stackmod.TOKEN_CLI, "--key-id", k.id], env={}, capture_output=True, text=True)
    assert bad.returncode == 2 and "MAILAPI_SECRET" in bad.stderr
