"""./build.sh demo: the whole stack on this machine, on its embedded defaults.

Starts Redis, FerretDB, an SMTP server that writes a Maildir, deliveryd and
nginx with the module on HTTPS (self-signed certificate), creates a demo API
key, sends one message through the API and prints how to send and recover
more. Ctrl-C stops everything.
"""
import json
import os
import shutil
import signal
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "t"))
import stack as stackmod  # noqa: E402

RUN = os.path.join(stackmod.ROOT, "run", "demo")


def port_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def call(method, url, token, cafile, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    ctx = ssl.create_default_context(cafile=cafile)
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        return json.loads(r.read())


def main():
    try:
        run()
    except SystemExit:
        raise
    except BaseException as e:
        print(f"demo: {e}\ndemo: logs are in {RUN}", file=sys.stderr)
        for s in STACKS:
            s.stop_all()
        sys.exit(1)


STACKS = []


def run():
    shutil.rmtree(RUN, ignore_errors=True)
    s = stackmod.Stack(RUN)
    STACKS.append(s)
    key = s.add_key("demo", "demo", "send+read")
    port = 8443 if port_free(8443) else stackmod.free_port()
    stopping = []

    def stop(*_):
        if not stopping:
            stopping.append(1)
            print("\n==> stopping nginx, deliveryd, SMTP server, FerretDB, PostgreSQL and Redis")
            s.stop_all()
            sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for what, start in (("Redis", s.start_redis), ("PostgreSQL and FerretDB (the store)", s.start_ferretdb),
                        ("SMTP server (Maildir)", s.start_smtp), ("deliveryd", s.start_deliveryd)):
        print(f"==> starting {what}")
        start()
    print(f"==> starting nginx with ngx_mail_api_module on https://127.0.0.1:{port}")
    s.start_nginx(tls=True, port=port)

    cert, _ = s.certificate()
    base = f"https://127.0.0.1:{port}"
    token = key.token(ttl=86400)
    print("==> sending a first message through the API")
    sent = call("POST", base + "/v1/messages", token, cert, {
        "from": "demo@example.com", "to": ["you@example.org"],
        "subject": "Hello from ngx_mail_api", "text": "It works: nginx -> Redis -> deliveryd -> SMTP.",
    })
    print(f"    {json.dumps(sent)}")
    status = {}
    for _ in range(100):
        try:
            status = call("GET", base + "/v1/messages/" + sent["id"], token, cert)
        except urllib.error.HTTPError as e:
            if e.code != 503:  # 503: the store is starting
                raise
        if status.get("status") == "sent":
            break
        time.sleep(0.1)
    print(f"    status: {status.get('status')}, events: {[e['type'] for e in status.get('events', [])]}")

    secret_file = os.path.join(RUN, "demo.secret")
    with open(secret_file, "w") as f:
        f.write(key.secret_b64 + "\n")
    os.chmod(secret_file, 0o600)
    cli = stackmod.TOKEN_CLI
    print(f"""
ngx_mail_api is running. In another terminal:

  # a token (valid 1 hour) for the demo key
  TOKEN=$({cli} --key-id demo --scopes send+read --secret-file {secret_file})

  # send
  curl --cacert {cert} -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
       -d '{{"from":"demo@example.com","to":["you@example.org"],"subject":"Hi","text":"Hello"}}' \\
       {base}/v1/messages

  # one message, from the moment of its 202 (the id the send answered)
  curl --cacert {cert} -H "Authorization: Bearer $TOKEN" {base}/v1/messages/MESSAGE_ID

  # what was sent to a recipient, decrypted, with its timeline (newest first)
  curl --cacert {cert} -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
       -d '{{"recipient":"you@example.org","limit":20}}' {base}/v1/messages/search

Received mail (one file per message, Maildir): {s.maildir}/new
  ls {s.maildir}/new && cat {s.maildir}/new/*
Logs: {RUN}/*.log

Press Ctrl-C to stop everything.""", flush=True)
    while True:
        time.sleep(1)
        for proc in s.procs:
            if not proc.alive():
                print(f"demo: {proc.name} exited ({proc.popen.returncode}); its log: {proc.log}", file=sys.stderr)
                stop()


if __name__ == "__main__":
    main()
