"""Starts the parts of ngx_mail_api on loopback ports in one directory.

Used by the end-to-end tests (t/e2e/conftest.py) and by the demo
(tools/demo.py), so both run the same real components: Debian's nginx with the
module, redis-server, FerretDB, an SMTP server writing a Maildir, deliveryd.
"""
import base64
import hashlib
import hmac
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("MAILAPI_BUILD", os.path.join(ROOT, "build"))
MODULE = os.path.join(BUILD, "ngx_mail_api_module", "ngx_mail_api_module.so")
DELIVERYD = os.path.join(BUILD, "deliveryd", "deliveryd")
FERRETDB = os.path.join(ROOT, "build", "ferretdb")  # not part of a sanitized build
TOKEN_CLI = os.path.join(BUILD, "tools", "mailapi-token", "mailapi-token")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
# MAILAPI_SANITIZE=1 with MAILAPI_BUILD pointing at an ASan+UBSan build: nginx
# (not instrumented itself) gets the ASan runtime preloaded, and every
# sanitizer report lands in <stack dir>/sanitizer.<pid>.
SANITIZE = os.environ.get("MAILAPI_SANITIZE") == "1"
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
PG_BIN = "/usr/lib/postgresql/15/bin"  # Debian's PostgreSQL 15 (package postgresql)
PSQL = shutil.which("psql") or "/usr/bin/psql"
# smtp-sink and smtp-source with the two postfix libraries they need (see
# deps_postfix_tools in build.sh); not installed as the machine's MTA.
POSTFIX = os.path.join(ROOT, "build", "postfix")


def postfix_env():
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.path.join(POSTFIX, "lib")
    return env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=30.0, what="server"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s")


def mint_token(key_id, secret, ttl=3600, scopes="send+read", expires=None):
    """The token format of DESIGN.md, in a few lines of Python."""
    if expires is None:
        expires = int(time.time()) + ttl
    signed = f"v1.{key_id}.{expires}.{scopes}"
    sig = hmac.new(secret, signed.encode(), hashlib.sha256).digest()
    return signed + "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()


def sanitizer_reports_in(directory):
    """{path: text} of the ASan/UBSan reports in a directory (log_path=<dir>/sanitizer)."""
    import glob
    out = {}
    for path in sorted(glob.glob(os.path.join(directory, "sanitizer.*"))):
        try:
            with open(path, errors="replace") as f:
                out[path] = f.read()
        except OSError:
            pass
    return out


class Proc:
    def __init__(self, name, popen, log, port=None):
        self.name, self.popen, self.log, self.port = name, popen, log, port

    def alive(self):
        return self.popen.poll() is None

    def send_signal(self, sig):
        if self.alive():
            self.popen.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if not self.alive():
            return self.popen.returncode
        self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()

    def log_tail(self, n=40):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


class Key:
    def __init__(self, key_id, tenant, scopes, secret, options=""):
        self.id, self.tenant, self.scopes, self.secret = key_id, tenant, scopes, secret
        self.options = options

    @property
    def secret_b64(self):
        return base64.b64encode(self.secret).decode()

    def token(self, ttl=3600, scopes=None, expires=None):
        return mint_token(self.id, self.secret, ttl, scopes or self.scopes, expires)


# Every Stack made in this process, in order, running or stopped: the tests
# read the sanitizer reports of each (t/e2e/conftest.py), whoever made it (a
# fixture of any shape, or the test itself) and however its processes ended.
STACKS = []


class Stack:
    def __init__(self, directory):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        STACKS.append(self)
        self.procs = []
        self.keys = []
        self.redis = self.mongo = self.pg = self.smtp = self.nginx = None
        self.maildir = os.path.join(directory, "maildir")
        self.write_keyring()

    # -- secrets -------------------------------------------------------
    def write_keyring(self, extra_keys=0):
        path = os.path.join(self.dir, "keyring")
        with open(path, "w") as f:
            f.write("# id     base64 of 32 random bytes; the last data key seals new messages\n")
            f.write("index " + base64.b64encode(os.urandom(32)).decode() + "\n")
            for i in range(1 + extra_keys):
                f.write(f"k{i + 1} " + base64.b64encode(os.urandom(32)).decode() + "\n")
        os.chmod(path, 0o600)
        return path

    def add_key(self, key_id, tenant, scopes="send+read", options=""):
        key = Key(key_id, tenant, scopes, os.urandom(32), options)
        self.keys.append(key)
        self.write_keys()
        return key

    def write_keys(self):
        path = os.path.join(self.dir, "keys")
        with open(path, "w") as f:
            f.write("# key_id tenant scopes secret_base64\n")
            for k in self.keys:
                f.write(f"{k.id} {k.tenant} {k.scopes} {k.secret_b64} {k.options}\n")
        os.chmod(path, 0o600)

    # -- processes -----------------------------------------------------
    def sanitizer_env(self, preload):
        env = dict(os.environ)
        if SANITIZE:
            report = f"log_path={self.dir}/sanitizer"
            # nginx keeps its cycle until exit by design: leaks are not findings
            env["ASAN_OPTIONS"] = f"{report}:detect_leaks=0:abort_on_error=0"
            env["UBSAN_OPTIONS"] = f"{report}:print_stacktrace=1"
            if preload:
                env["LD_PRELOAD"] = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                                                   text=True).stdout.strip()
        return env

    def sanitizer_reports(self):
        """{path: text} of every sanitizer report in the stack's directory,
        from live processes and from ones that have exited (or were killed)."""
        return sanitizer_reports_in(self.dir)

    def spawn(self, name, argv, port=None, env=None, what=None):
        log = os.path.join(self.dir, name + ".log")
        out = open(log, "ab")
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=env, cwd=self.dir, start_new_session=True)
        out.close()
        proc = Proc(name, popen, log, port)
        self.procs.append(proc)
        if port:
            try:
                wait_port(port, popen, what=what or name)
            except RuntimeError as e:
                raise RuntimeError(f"{e}; log {log}:\n{proc.log_tail()}") from None
        return proc

    def start_redis(self, port=None, unix=False):
        """unix: a Unix socket beside the TCP port (<dir>/redis.sock, in
        self.redis.unix), for an nginx on the same host."""
        port = port or free_port()
        sock = ["--unixsocket", os.path.join(self.dir, "redis.sock"), "--unixsocketperm", "700"] if unix else []
        # rdbcompression off: the tests read the dump to prove nothing is plaintext
        # appendonly, appendfsync always, noeviction: conf/redis.conf, what the
        # project ships: an acknowledged send is on disk before the 202
        self.redis = self.spawn("redis", [REDIS, "--port", str(port), "--bind", "127.0.0.1",
                                          "--save", "", "--appendonly", "yes",
                                          "--appendfsync", os.environ.get("MAILAPI_APPENDFSYNC", "always"),
                                          "--maxmemory-policy", "noeviction",
                                          "--rdbcompression", "no", "--dir", self.dir,
                                          "--dbfilename", "redis-dump.rdb"] + sock, port)
        self.redis.unix = sock[1] if sock else None
        return self.redis

    def pg_user(self):
        """PostgreSQL refuses to run as root: as root it runs as Debian's
        `postgres` user, otherwise as whoever runs the stack."""
        return "postgres" if os.geteuid() == 0 else None

    def as_pg_user(self, argv):
        user = self.pg_user()
        return ["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--"] + argv if user else argv

    def start_postgres(self, port=None):
        """Debian's PostgreSQL with its own data directory under the stack
        directory, on a loopback port (and a socket in that directory)."""
        port = port or free_port()
        data = os.path.join(self.dir, "pg")
        user = self.pg_user()
        if user:
            # the server's user must reach its directory: traverse (not read) the parents
            d = self.dir
            while d not in ("/", ""):
                os.chmod(d, os.stat(d).st_mode | 0o001)
                d = os.path.dirname(d)
        if not os.path.exists(os.path.join(data, "PG_VERSION")):
            os.makedirs(data, exist_ok=True)
            if user:
                shutil.chown(data, user, user)
            r = subprocess.run(self.as_pg_user([os.path.join(PG_BIN, "initdb"), "-D", data, "-U", "mailapi",
                                                "-A", "trust", "-E", "UTF8", "--locale", "C.UTF-8"]),
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"initdb failed:\n{r.stdout}{r.stderr}")
        sock = os.path.join(self.dir, "pgsock")
        os.makedirs(sock, exist_ok=True)
        if user:
            shutil.chown(sock, user, user)
        # synchronous_commit stays on: a record deliveryd was told is written
        # survives a kill -9 of the server (the tests do that)
        argv = self.as_pg_user([os.path.join(PG_BIN, "postgres"), "-D", data, "-p", str(port),
                                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={sock}",
                                "-c", "max_connections=200", "-c", "shared_buffers=256MB",
                                "-c", "logging_collector=off", "-c", "log_min_messages=warning"])
        self.pg = self.spawn("postgres", argv, port)
        self.wait_pg_ready()
        return self.pg

    def psql(self, sql, database="ferretdb", check=True):
        r = subprocess.run([PSQL, "-h", "127.0.0.1", "-p", str(self.pg.port), "-U", "mailapi", "-d", database,
                            "-v", "ON_ERROR_STOP=1", "-qAtc", sql], capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError(f"psql failed: {r.stderr.strip()}\n{sql}")
        return r.stdout.strip()

    def wait_pg_ready(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.pg.alive():
                raise RuntimeError(f"postgres exited; log {self.pg.log}:\n{self.pg.log_tail()}")
            r = subprocess.run([PSQL, "-h", "127.0.0.1", "-p", str(self.pg.port), "-U", "mailapi", "-d", "postgres",
                                "-qAtc", "SELECT 1"], capture_output=True, text=True)
            if r.returncode == 0:
                if self.psql("SELECT 1 FROM pg_database WHERE datname = 'ferretdb'", "postgres") != "1":
                    self.psql("CREATE DATABASE ferretdb", "postgres")
                return
            time.sleep(0.1)
        raise RuntimeError(f"postgres did not accept connections within {timeout}s; log {self.pg.log}")

    def start_ferretdb(self, port=None):
        """FerretDB (the MongoDB wire protocol) over the stack's PostgreSQL,
        which is started first if it is not running."""
        if self.pg is None or not self.pg.alive():
            self.start_postgres(self.pg.port if self.pg else None)
        port = port or free_port()
        url = f"postgres://mailapi@127.0.0.1:{self.pg.port}/ferretdb"
        self.mongo = self.spawn("ferretdb", [FERRETDB, "--listen", f"127.0.0.1:{port}", "--postgresql-url", url],
                                port)
        self.prepare_store()
        return self.mongo

    # FerretDB 1.24 over PostgreSQL turns top-level equality into
    # `_jsonb->'field' @> value`, which only a GIN index on that expression
    # serves (the indexes createIndexes makes are btrees it never uses); a
    # cached generic plan would not use it either. docs/storage.md.
    STORE_INDEXES = {"messages": ("_id", "m", "rk", "x"), "hints": ("_id", "h")}

    def prepare_store(self):
        import pymongo
        db = pymongo.MongoClient(self.mongodb_uri, serverSelectionTimeoutMS=10000)["mailapi"]
        existing = set(db.list_collection_names())
        for coll in self.STORE_INDEXES:
            if coll not in existing:
                try:
                    db.create_collection(coll)
                except pymongo.errors.CollectionInvalid:
                    pass
        self.psql("ALTER DATABASE ferretdb SET plan_cache_mode = force_custom_plan")
        for coll, fields in self.STORE_INDEXES.items():
            self.gin_indexes(coll, fields)

    def store_table(self, collection):
        """The PostgreSQL table FerretDB keeps a collection in."""
        return self.psql("SELECT _jsonb->>'table' FROM mailapi._ferretdb_database_metadata "
                         f"WHERE _jsonb->>'_id' = '{collection}'")

    def gin_indexes(self, collection, fields):
        table = self.store_table(collection)
        for field in fields:
            name = f"{table}_{field.strip('_')}_gin"
            self.psql(f"CREATE INDEX IF NOT EXISTS {name} ON mailapi.{table} "
                      f"USING gin ((_jsonb->'{field}')) WITH (fastupdate = off)")

    @property
    def mongodb_uri(self):
        return f"mongodb://127.0.0.1:{self.mongo.port}/mailapi"

    def start_smtp(self, port=None, name="smtp", tls=None, auth=None, smtputf8=False, refuse=None):
        """The SMTP server writing a Maildir (self.maildir for the first;
        <dir>/<name>-maildir for others). tls: None, "starttls" or "implicit"
        with the stack's certificate; auth: "login:password" to require;
        smtputf8: offer SMTPUTF8; refuse: the reply to every RCPT."""
        port = port or free_port()
        maildir = self.maildir if name == "smtp" else os.path.join(self.dir, name + "-maildir")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(maildir, sub), exist_ok=True)
        argv = ["/usr/bin/python3", os.path.join(ROOT, "t", "smtp_server.py"), "--listen", f"127.0.0.1:{port}",
                "--maildir", maildir]
        if tls:
            cert, key = self.certificate()
            argv += ["--tls-cert", cert, "--tls-key", key] + (["--implicit-tls"] if tls == "implicit" else [])
        if auth:
            argv += ["--auth", auth]
        if smtputf8:
            argv += ["--smtputf8"]
        if refuse:
            argv += ["--refuse", refuse]
        proc = self.spawn(name, argv, port)
        proc.maildir = maildir
        if name == "smtp":
            self.smtp = proc
        return proc

    def start_standin(self, port=None, ses_session_token=False):
        """The hosted providers' stand-in (t/provider_standin.py), with fresh keys for each."""
        port = port or free_port()
        self.standin_keys = {
            "sendgrid": "SG." + os.urandom(12).hex(), "http": os.urandom(12).hex(),
            "mailgun": "key-" + os.urandom(16).hex(), "postmark": str(uuid.uuid4()),
            # AWS's shapes: 20-character key id, 40-character secret with + and /
            "ses_access_key_id": "AKIA" + base64.b32encode(os.urandom(10)).decode()[:16],
            "ses_secret_access_key": base64.b64encode(os.urandom(30)).decode(),
            "ses_session_token": base64.b64encode(os.urandom(48)).decode() if ses_session_token else "",
        }
        k = self.standin_keys
        argv = ["/usr/bin/python3", os.path.join(ROOT, "t", "provider_standin.py"), "--listen", f"127.0.0.1:{port}",
                "--sendgrid-key", k["sendgrid"], "--http-token", k["http"], "--mailgun-key", k["mailgun"],
                "--postmark-token", k["postmark"], "--ses-access-key-id", k["ses_access_key_id"],
                "--ses-secret-access-key", k["ses_secret_access_key"]]
        if ses_session_token:
            argv += ["--ses-session-token", k["ses_session_token"]]
        self.standin = self.spawn("standin", argv, port)
        return self.standin

    def start_http_sink(self, port=None, name="httpsink"):
        """A fast stand-in for SendGrid's POST /v3/mail/send: Debian's nginx
        (no module) answering 202 after reading and discarding the body, on
        keepalive connections. Under /hold/ the same answer is held back by
        limit_req (1 request a minute, the rest queued), for a provider that
        keeps every request waiting (1 a minute gets through)."""
        port = port or free_port()
        conf = os.path.join(self.dir, name + ".conf")
        with open(conf, "w") as f:
            f.write(f"""worker_processes 1;
daemon off;
master_process on;
pid {self.dir}/{name}.pid;
error_log {self.dir}/{name}-error.log warn;
{"user root;" if os.geteuid() == 0 else ""}
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {self.dir}/{name}-body;
    proxy_temp_path {self.dir}/{name}-proxy;
    fastcgi_temp_path {self.dir}/{name}-fastcgi;
    uwsgi_temp_path {self.dir}/{name}-uwsgi;
    scgi_temp_path {self.dir}/{name}-scgi;
    client_body_buffer_size 64k;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    limit_req_zone $binary_remote_addr zone=hold:1m rate=1r/m;
    limit_req_log_level info;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /v3/mail/send {{ return 202; }}
        # limit_req acts after the rewrite phase, where `return` would answer: a proxy (content phase)
        location = /hold/v3/mail/send {{
            limit_req zone=hold burst=1000000;
            proxy_pass http://127.0.0.1:{port}/v3/mail/send;
        }}
    }}
}}
""")
        proc = self.spawn(name, [NGINX, "-c", conf, "-e", os.path.join(self.dir, name + "-error.log")], port)
        proc.conf = conf
        return proc

    def start_smtp_sink(self, port=None, name="smtpsink"):
        """postfix's smtp-sink (C, from Debian's postfix package, extracted
        by ./build.sh deps): accepts every mail and throws it away."""
        port = port or free_port()
        argv = [os.path.join(POSTFIX, "smtp-sink")]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # it refuses to run as root otherwise
        # -m: connections served at once (default 256)
        argv += ["-h", "mailapi.test", "-m", "2048", f"127.0.0.1:{port}", "4096"]
        return self.spawn(name, argv, port, env=postfix_env())

    def standin_conf(self):
        base = f"http://127.0.0.1:{self.standin.port}"
        return {"sendgrid_url": base, "sendgrid_api_key": self.standin_keys["sendgrid"],
                "http_url": base + "/generic", "http_token": self.standin_keys["http"]}

    MAILGUN_DOMAIN = "mg.example.com"
    SES_REGION = "eu-west-1"

    def standin_providers(self, types=("mailgun", "postmark", "ses")):
        """`provider NAME TYPE key=value ...` lines for the stand-in, each named after its type."""
        base = f"http://127.0.0.1:{self.standin.port}"
        k = self.standin_keys
        lines = {
            "mailgun": f"provider mailgun mailgun url={base} domain={self.MAILGUN_DOMAIN} api_key={k['mailgun']}",
            "postmark": f"provider postmark postmark url={base} server_token={k['postmark']} message_stream=outbound",
            "ses": (f"provider ses ses url={base} region={self.SES_REGION} access_key_id={k['ses_access_key_id']} "
                    f"secret_access_key={k['ses_secret_access_key']}"
                    + (f" session_token={k['ses_session_token']}" if k["ses_session_token"] else "")),
            "sendgrid": f"provider sendgrid sendgrid url={base} api_key={k['sendgrid']}",
            "http": f"provider http http url={base}/generic token={k['http']}",
        }
        return [lines[t] for t in types]

    def deliveryd_conf(self, **overrides):
        conf = {
            "redis": f"127.0.0.1:{self.redis.port}",
            "mongodb": self.mongodb_uri,
            "keyring": os.path.join(self.dir, "keyring"),
            "smtp_url": f"smtp://127.0.0.1:{self.smtp.port}/mailapi.test",
            "message_id_domain": "mailapi.test",
            "retry_interval": "1",
            "claim_idle": "5",
            "retry_base": "1",
            "max_attempts": "4",
            "send_timeout": "4",
            "shutdown_grace": "5",
            "admin_listen": f"127.0.0.1:{free_port()}",
        }
        conf.update({k: str(v) for k, v in overrides.items()})
        return conf

    def write_deliveryd_conf(self, path, lines=(), **overrides):
        """`name value` settings, then raw lines (provider ..., route ...)."""
        conf = self.deliveryd_conf(**overrides)
        with open(path, "w") as f:
            for k, v in conf.items():
                f.write(f"{k} {v}\n")
            for line in lines:
                f.write(line + "\n")
        return conf

    def start_deliveryd(self, name="deliveryd", lines=(), env=None, **overrides):
        """env: variables added to deliveryd's environment."""
        path = os.path.join(self.dir, name + ".conf")
        conf = self.write_deliveryd_conf(path, lines, **overrides)
        log = os.path.join(self.dir, name + ".log")
        offset = os.path.getsize(log) if os.path.exists(log) else 0  # an earlier run's lines are not this one's
        proc = self.spawn(name, [DELIVERYD, "-c", path], env=dict(self.sanitizer_env(preload=False), **(env or {})))
        proc.admin = "http://" + conf["admin_listen"]
        proc.conf = path
        deadline = time.time() + 30

        def started():
            # "started" is among the first lines; a busy deliveryd may have
            # logged hundreds more by the time this looks (no tail then)
            with open(log, "rb") as f:
                f.seek(offset)
                return b'"msg":"started"' in f.read(1 << 20)

        while not started():
            if not proc.alive() or time.time() > deadline:
                raise RuntimeError(f"deliveryd did not start; log {proc.log}:\n{proc.log_tail()}")
            time.sleep(0.05)
        return proc

    def render_nginx(self, port, tls=False, workers=1, extra_http="", redis_timeout="2s",
                     client_max_body_size="16m", client_body_buffer_size="1m", log_level="info", name="nginx",
                     tls_port=None, access_log=True, redis=None):
        """tls: the one listener is TLS; tls_port: a second, TLS, listener
        next to the plain one (the benchmark's same-nginx TLS case); redis:
        mail_api_redis (default: this stack's Redis over TCP)."""
        tls_lines, listen_tls = "", ""
        if tls_port:
            listen_tls = f"        listen 127.0.0.1:{tls_port} ssl;\n"
        if tls or tls_port:
            cert, key = self.certificate()
            tls_lines = (f"        ssl_certificate {cert};\n        ssl_certificate_key {key};\n"
                         f"        include {ROOT}/conf/mail_api_tls.conf;\n")
        with open(os.path.join(ROOT, "t", "nginx.conf.in")) as f:
            template = f.read()
        text = template.format(
            module=MODULE, workers=workers, dir=self.dir, log_level=log_level,
            user="user root;" if os.geteuid() == 0 else "",
            redis=redis or f"127.0.0.1:{self.redis.port}", mongodb=self.mongodb_uri, port=port,
            ssl=" ssl" if tls else "", tls=tls_lines, listen_tls=listen_tls, extra_http=extra_http,
            redis_timeout=redis_timeout,
            access_log=os.path.join(self.dir, "nginx-access.log") if access_log else "off",
            client_max_body_size=client_max_body_size, client_body_buffer_size=client_body_buffer_size)
        path = os.path.join(self.dir, name + ".conf")
        with open(path, "w") as f:
            f.write(text)
        return path

    def nginx_test(self, path):
        """nginx -t on a rendered config: (ok, output)."""
        r = subprocess.run([NGINX, "-t", "-c", path, "-e", os.path.join(self.dir, "nginx-t.log")],
                           capture_output=True, text=True, env=self.sanitizer_env(preload=True))
        return r.returncode == 0, r.stdout + r.stderr

    def start_nginx(self, port=None, name="nginx", **kw):
        port = port or free_port()
        path = self.render_nginx(port, name=name, **kw)
        ok, out = self.nginx_test(path)
        if not ok:
            raise RuntimeError(f"nginx -t failed for {path}:\n{out}")
        proc = self.spawn(name, [NGINX, "-c", path, "-e", os.path.join(self.dir, "nginx-error.log")], port,
                          env=self.sanitizer_env(preload=True))
        proc.conf = path
        proc.tls = kw.get("tls", False)
        if name == "nginx":
            self.nginx = proc
        return proc

    def certificate(self):
        cert, key = os.path.join(self.dir, "tls.crt"), os.path.join(self.dir, "tls.key")
        if not os.path.exists(cert):
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                            "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=localhost",
                            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                           check=True, capture_output=True)
        return cert, key

    def start_all(self, tls=False, port=None):
        self.start_redis()
        self.start_ferretdb()  # and its PostgreSQL
        self.start_smtp()
        self.start_deliveryd()
        self.start_nginx(tls=tls, port=port)

    def stop_all(self):
        for proc in reversed(self.procs):
            # nginx: QUIT is a graceful stop; postgres: INT is its fast shutdown
            # (TERM would wait for every client); the others stop on TERM
            proc.stop(signal.SIGQUIT if proc.name.startswith("nginx")
                      else signal.SIGINT if proc.name.startswith("postgres") else signal.SIGTERM)
        self.procs = []

    def failure_report(self):
        lines = [f"stack directory kept: {self.dir}"]
        for proc in self.procs + [p for p in (self.nginx,) if p and p not in self.procs]:
            lines.append(f"--- {proc.name} ({proc.log}) ---")
            lines.append(proc.log_tail(30))
        err = os.path.join(self.dir, "nginx-error.log")
        if os.path.exists(err):
            with open(err, errors="replace") as f:
                lines.append("--- nginx-error.log ---")
                lines.append("".join(f.readlines()[-30:]))
        return "\n".join(lines)


if __name__ == "__main__":
    sys.exit("t/stack.py is a library: see tools/demo.py and t/e2e/conftest.py")
