"""What an operator meets: nginx -t on bad configuration, Redis outages, large
bodies, HTTPS."""
import json
import os
import time

import pytest
import requests

import stack as stackmod
from conftest import Api, message


@pytest.fixture
def own_stack(stack, tmp_path):
    """A second nginx (and Redis) next to the session stack, sharing its MongoDB."""
    s = stackmod.Stack(str(tmp_path))
    s.keys = list(stack.keys)
    s.write_keys()
    with open(os.path.join(stack.dir, "keyring")) as src, open(os.path.join(s.dir, "keyring"), "w") as dst:
        dst.write(src.read())
    s.mongo = stack.mongo
    yield s
    s.stop_all()


def render(s, **kw):
    s.redis = s.redis or stackmod.Proc("redis", None, None, stackmod.free_port())
    return s.render_nginx(stackmod.free_port(), **kw)


@pytest.mark.parametrize("edit,expect", [
    (("mail_api_keys {dir}/keys;", "mail_api_keys {dir}/missing;"), '"mail_api_keys'),
    (("mail_api_keys {dir}/keys;", ""), '"mail_api" is used but "mail_api_keys" is not set'),
    (("mail_api_keyring {dir}/keyring;", ""), '"mail_api_keyring" is not set'),
    (("mail_api_redis {redis};", "mail_api_redis 127.0.0.1:70000;"), 'invalid port in "127.0.0.1:70000"'),
    (('mail_api_mongodb "{mongodb}";', 'mail_api_mongodb "http://nope";'), "invalid MongoDB URI"),
    (("mail_api_redis_timeout {redis_timeout};", "mail_api_redis_timeout soon;"), '"mail_api_redis_timeout"'),
    (("mail_api;", "mail_api on;"), 'invalid number of arguments in "mail_api"'),
])
def test_nginx_t_names_the_bad_directive(own_stack, edit, expect):
    path = render(own_stack)
    text = open(path).read()
    old, new = (e.format(dir=own_stack.dir, redis=f"127.0.0.1:{own_stack.redis.port}",
                         mongodb=own_stack.mongodb_uri, redis_timeout="2s") for e in edit)
    assert old in text
    with open(path, "w") as f:
        f.write(text.replace(old, new))
    ok, out = own_stack.nginx_test(path)
    assert not ok
    assert expect in out, out
    assert path in out or "is not set" in out  # file and line, where there is one


@pytest.mark.parametrize("content,expect", [
    ("k1 acme admin MDEyMzQ1Njc4OWFiY2RlZg==\n", "line 1: scopes must be send, read, webhooks, erase or several"),
    ("# ok\nk1 acme send c2hvcnQ=\n", "line 2: secret must be base64 of at least 16 bytes"),
    ("k1 acme send MDEyMzQ1Njc4OWFiY2RlZg== senders=example.com,,x\n", "line 1: senders must be a comma-separated"),
    ("k1 acme send MDEyMzQ1Njc4OWFiY2RlZg== senders=*.\n", "line 1: senders must be"),
])
def test_nginx_t_names_the_bad_keys_line(own_stack, content, expect):
    with open(os.path.join(own_stack.dir, "keys"), "w") as f:
        f.write(content)
    ok, out = own_stack.nginx_test(render(own_stack))
    assert not ok and expect in out, out


def test_bad_keyring_is_refused(own_stack):
    with open(os.path.join(own_stack.dir, "keyring"), "w") as f:
        f.write("k1 c2hvcnQ=\n")
    ok, out = own_stack.nginx_test(render(own_stack))
    assert not ok and "keyring" in out and "line 1" in out, out


@pytest.fixture
def own_redis(own_stack, keys, rcpt):
    """Its own Redis behind its own nginx (500 ms timeout), already serving."""
    redis = own_stack.start_redis()
    nginx = own_stack.start_nginx(redis_timeout="500ms")
    api = Api(f"http://127.0.0.1:{nginx.port}")
    token = keys["acme_full"].token()
    assert api.send(message(rcpt), token).status_code == 202
    return redis, api, token


def test_redis_down_gives_503_and_service_resumes(own_stack, own_redis, rcpt):
    redis, api, token = own_redis

    port = redis.port
    redis.stop()
    time.sleep(0.3)
    t0 = time.time()
    r = api.send(message(rcpt), token)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "queue_unavailable"
    assert r.headers["Retry-After"] == "1"
    assert time.time() - t0 < 2
    h = api.http.get(api.base + "/healthz")
    assert h.status_code == 503 and h.json()["queue"] == "down"

    own_stack.start_redis(port=port)
    deadline = time.time() + 10
    while time.time() < deadline:
        r = api.send(message(rcpt), token)
        if r.status_code == 202:
            break
        time.sleep(0.2)
    assert r.status_code == 202, r.text


def test_redis_that_stops_answering_times_out(own_redis, rcpt):
    redis, api, token = own_redis
    redis.send_signal(19)  # SIGSTOP: connected, silent
    try:
        t0 = time.time()
        r = api.send(message(rcpt), token)
        assert r.status_code == 503 and r.json()["error"]["code"] == "queue_unavailable"
        assert time.time() - t0 < 2
    finally:
        redis.send_signal(18)  # SIGCONT
    deadline = time.time() + 10
    while time.time() < deadline and api.send(message(rcpt), token).status_code != 202:
        time.sleep(0.2)
    assert api.send(message(rcpt), token).status_code == 202


def test_body_buffered_to_a_temp_file_works(stack, own_stack, keys, inbox, rcpt):
    own_stack.redis = stack.redis  # the session's deliveryd drains it
    nginx = own_stack.start_nginx(client_body_buffer_size="1k")
    api = Api(f"http://127.0.0.1:{nginx.port}")
    text = "long body line\n" * 5000  # 75 KB > 1 KiB buffer
    r = api.send(message(rcpt, text=text), keys["acme_full"].token())
    assert r.status_code == 202, r.text
    mail = inbox.find(r.json()["id"])
    assert mail.get_body(("plain",)).get_content().replace("\r\n", "\n") == text
    assert inbox.count(r.json()["id"]) == 1


def test_https(stack, own_stack, keys, rcpt):
    own_stack.redis = stack.redis
    nginx = own_stack.start_nginx(tls=True)
    cert, _ = own_stack.certificate()
    api = Api(f"https://127.0.0.1:{nginx.port}", verify=cert)
    r = api.send(message(rcpt), keys["acme_full"].token())
    assert r.status_code == 202, r.text
    assert r.headers["Strict-Transport-Security"].startswith("max-age=")
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"https://127.0.0.1:{nginx.port}/healthz", timeout=5)  # untrusted without the cert


def test_reload_picks_up_new_keys(own_stack, keys, rcpt):
    own_stack.start_redis()
    nginx = own_stack.start_nginx()
    api = Api(f"http://127.0.0.1:{nginx.port}")
    new = own_stack.add_key("fresh_key", "acme")
    assert api.send(message(rcpt), new.token()).json()["error"]["code"] == "token_unknown_key"
    nginx.send_signal(1)  # SIGHUP: reload
    deadline = time.time() + 10
    while time.time() < deadline:
        if api.send(message(rcpt), new.token()).status_code == 202:
            break
        time.sleep(0.2)
    assert api.send(message(rcpt), new.token()).status_code == 202


def test_a_reload_with_changed_secrets_refuses_their_old_tokens_across_many_keys(own_stack, keys, rcpt):
    # More keys than hmac_sha256 keeps keyed contexts for (8 a thread), used in
    # turn; then most of them get a new secret under the same key id.
    own_stack.start_redis()
    many = [own_stack.add_key(f"many{i}", "acme") for i in range(12)]
    nginx = own_stack.start_nginx()
    api = Api(f"http://127.0.0.1:{nginx.port}")
    for k in many + many[:3] + many[::-1]:
        assert api.send(message(rcpt), k.token()).status_code == 202, k.id
    old = [k.token() for k in many]
    for k in many[:10]:
        k.secret = os.urandom(32)
    own_stack.write_keys()
    nginx.send_signal(1)  # SIGHUP: reload
    deadline = time.time() + 10
    while time.time() < deadline and api.send(message(rcpt), many[0].token()).status_code != 202:
        time.sleep(0.2)
    for _ in range(2):
        for i, k in enumerate(many):
            r = api.send(message(rcpt), old[i])
            if i < 10:
                assert r.status_code == 401 and r.json()["error"]["code"] == "token_signature_invalid", (k.id, r.text)
            else:
                assert r.status_code == 202, (k.id, r.text)
            assert api.send(message(rcpt), k.token()).status_code == 202, k.id


def test_configured_stream_name_is_used(own_stack, keys, rcpt):
    own_stack.start_redis()
    nginx = own_stack.start_nginx(extra_http="    mail_api_redis_stream custom:stream;\n")
    text = open(nginx.conf).read()
    assert "mail_api_redis_stream custom:stream;" in text
    api = Api(f"http://127.0.0.1:{nginx.port}")
    assert api.send(message(rcpt), keys["acme_full"].token()).status_code == 202
    import subprocess
    xlen = subprocess.run(["redis-cli", "-p", str(own_stack.redis.port), "XLEN", "custom:stream"],
                          capture_output=True, text=True).stdout.strip()
    assert xlen == "1"


def test_shipped_deliveryd_conf_is_valid(stack):
    import subprocess
    env = {"DELIVERYD_KEYRING": os.path.join(stack.dir, "keyring")}
    r = subprocess.run([stackmod.DELIVERYD, "-c", os.path.join(stackmod.ROOT, "conf", "deliveryd.conf"),
                        "--check-config"], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "configuration ok" in r.stdout, r.stdout + r.stderr
    with open(os.path.join(stack.dir, "bad-deliveryd.conf"), "w") as f:
        f.write("redis 127.0.0.1:6379\nbatch many\n")
    with open(os.path.join(stack.dir, "bad2-deliveryd.conf"), "w") as g:
        g.write("send_timeout 60\nclaim_idle 30\n")
    r2 = subprocess.run([stackmod.DELIVERYD, "-c", g.name, "--check-config"], env=env, capture_output=True, text=True)
    assert r2.returncode == 1 and "claim_idle (30 s) must be longer than send_timeout (60 s)" in r2.stderr
    r = subprocess.run([stackmod.DELIVERYD, "-c", f.name, "--check-config"], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "bad-deliveryd.conf:2: batch must be 1..10000" in r.stderr


@pytest.fixture
def own_mongo(stack, own_stack, keys):
    """Its own FerretDB behind its own nginx, on the session's Redis."""
    own_stack.redis = stack.redis
    mongo = own_stack.start_ferretdb()
    nginx = own_stack.start_nginx()
    return mongo, nginx, Api(f"http://127.0.0.1:{nginx.port}"), keys["acme_full"].token()


def test_store_down_gives_503_then_recovers(own_stack, own_mongo, rcpt):
    mongo, nginx, api, token = own_mongo
    assert api.list(rcpt, token).status_code == 200
    port = mongo.port
    mongo.stop()
    t0 = time.time()
    r = api.list(rcpt, token)
    assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
    assert r.headers["Retry-After"] == "1"
    assert time.time() - t0 < 5  # bounded by the server selection timeout, never hung
    assert api.get("msg_01M84ZFCSJSW0XXFYF45RCBA19", token).status_code == 503
    own_stack.start_ferretdb(port=port)
    deadline = time.time() + 15
    while time.time() < deadline and api.list(rcpt, token).status_code != 200:
        time.sleep(0.3)
    assert api.list(rcpt, token).status_code == 200


def test_client_gone_mid_query_leaves_worker_healthy(own_stack, own_mongo, rcpt):
    import socket
    mongo, nginx, api, token = own_mongo
    mongo.stop()  # queries now take the full server selection timeout
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", nginx.port))
        body = f'{{"recipient": "{rcpt}"}}'
        s.sendall(f"POST /v1/messages/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\nAuthorization: Bearer {token}\r\n\r\n{body}".encode())
        s.close()
    time.sleep(3)  # the queries finish for nobody
    assert api.http.get(api.base + "/healthz").status_code == 200
    log = open(os.path.join(own_stack.dir, "nginx-error.log")).read()
    assert "exited on signal" not in log and "[alert]" not in log, log[-2000:]


@pytest.mark.skipif(not stackmod.SANITIZE, reason="only in the sanitizer pass")
def test_sanitized_module_is_what_runs(stack):
    """The sanitizer pass is only worth something if nginx's workers really run
    the instrumented module with the ASan runtime."""
    import subprocess
    pids = subprocess.run(["pgrep", "-P", str(stack.nginx.popen.pid)], capture_output=True, text=True).stdout.split()
    assert pids
    maps = open(f"/proc/{pids[0]}/maps").read()
    assert "libasan.so" in maps
    assert os.path.join(stackmod.BUILD, "ngx_mail_api_module", "ngx_mail_api_module.so") in maps


def test_tls_settings_grade_clean(stack, own_stack):
    """Debian's testssl.sh on the shipped TLS settings: protocols, cipher
    categories, forward secrecy and cipher order without a finding above INFO."""
    import json
    import subprocess
    own_stack.redis = stack.redis
    nginx = own_stack.start_nginx(tls=True)
    report = os.path.join(own_stack.dir, "testssl.json")
    r = subprocess.run(["testssl", "--quiet", "--color", "0", "--warnings", "batch", "-p", "-s", "-f", "-P",
                        "--jsonfile", report, f"127.0.0.1:{nginx.port}"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    findings = json.load(open(report))
    ids = {f["id"] for f in findings}
    assert {"SSLv3", "TLS1", "TLS1_2", "TLS1_3", "cipher_order"} <= ids  # the scan really ran
    # engine_problem: this machine's openssl has no GOST engine; says nothing about the server
    bad = [f for f in findings if f["severity"] not in ("OK", "INFO") and f["id"] != "engine_problem"]
    assert not bad, bad
    offered = {f["id"]: f["finding"] for f in findings}
    assert offered["TLS1"] == "not offered" and offered["TLS1_1"] == "not offered"
