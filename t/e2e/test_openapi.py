"""docs/openapi.yaml against the real thing: schemathesis generates requests
from it (valid and invalid), and nginx must never answer 5xx, crash a worker,
or answer anything the description does not allow."""
import os
import subprocess

import stack as stackmod

SCHEMATHESIS = os.path.join(stackmod.ROOT, "build", "venv", "bin", "schemathesis")


def test_api_matches_its_description(stack, api, keys):
    token = keys["acme_full"].token(ttl=3600)
    r = subprocess.run(
        [SCHEMATHESIS, "--config-file", os.path.join(stackmod.ROOT, "t", "schemathesis.toml"), "run",
         os.path.join(stackmod.ROOT, "docs", "openapi.yaml"), "--url", api.base,
         "-H", f"Authorization: Bearer {token}", "--max-examples", "40", "--seed", "20261123",
         "--no-shrink", "--warnings", "off", "--request-timeout", "10"],
        capture_output=True, text=True, timeout=900, cwd=stack.dir)
    summary = r.stdout[-6000:]
    assert r.returncode == 0, summary + r.stderr[-2000:]
    assert "generated" in summary and "passed" in summary
    err = open(os.path.join(stack.dir, "nginx-error.log")).read()
    assert "exited on signal" not in err
