"""``hpcfs serve flux`` against the official client, flux-restful-client (PyPI), run unchanged in its own
venv (``.venv-flux``, made by ``scripts/install``) as a subprocess, in single-user and multi-user mode;
and the server's own rules: 401 + WWW-Authenticate before the token exchange, authentication before any
body is read, bodies capped, secrets kept out of the jobs' environment, commands run without a shell."""
import json
import os
import re
import subprocess
import sys
import time

import jwt
import pytest
import requests

from fixtures_flux import CREDENTIALS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT_PYTHON = os.path.join(REPO, ".venv-flux", "bin", "python")
CLIENT_CLI = os.path.join(REPO, ".venv-flux", "bin", "flux-restful-cli")
needs_client = pytest.mark.skipif(not os.path.exists(CLIENT_PYTHON), reason="needs .venv-flux (scripts/install)")

# The client's Python API, as its README shows it.  Its stream_output() cannot work in 0.2.1 (it treats
# httpx's stream() context manager as a response), so the stream is read through the client's own session.
SCRIPT = r'''
import json, sys, time
from flux_restful_client.main import get_client

client = get_client()
result = {}
done = client.submit("sh -c \"echo first; echo second >&2; echo 'a,b'; exit 3\"")
slow = client.submit("sleep 30")
result["submitted"] = [done, slow]
def wait_inactive(jobid):  # bounded generously: a loaded machine ends and reaps jobs late
    deadline = time.monotonic() + 120
    while client.jobs(jobid)["state"] != "INACTIVE" and time.monotonic() < deadline:
        time.sleep(0.05)
wait_inactive(done["id"])
result["info"] = client.jobs(done["id"])
result["output"] = client.output(done["id"])
result["jobs"] = client.jobs()
result["listing"] = client.jobs(detail=True, listing=True)
result["nodes"] = client.list_nodes()
with client.session.stream("GET", f"{client.host}/v1/jobs/{done['id']}/output/stream", headers=client.headers) as r:
    result["stream"] = [line for line in r.iter_lines()]
result["cancel"] = client.cancel(slow["id"])
wait_inactive(slow["id"])
result["cancelled"] = client.jobs(slow["id"])
result["unknown"] = client.jobs(12345)
print(json.dumps(result))
'''


def run_client(handle, *args, script=None):
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLUX_")}
    env.update(handle.env, FLUX_RESTFUL_HOST=handle.api, PYTHONPATH="")
    command = [CLIENT_PYTHON, "-c", script] if script else [CLIENT_CLI, *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


@needs_client
@pytest.mark.parametrize("auth", [False, True], ids=["single-user", "multi-user"])
def test_the_official_client_drives_every_endpoint(make_flux_server, auth):
    handle = make_flux_server(auth=auth)
    result = json.loads(run_client(handle, script=SCRIPT))
    done, slow = result["submitted"]
    assert done["Message"] == "Job submit." and slow["id"] > done["id"]  # a newer job has a larger id
    info = result["info"]
    assert (info["state"], info["result"], info["returncode"], info["success"]) == ("INACTIVE", "FAILED", 3, False)
    assert info["id"] == done["id"] and info["t_submit"] <= info["t_run"] <= info["t_inactive"]
    assert result["output"] == {"Output": ["first\n", "second\n", "a,b\n"]}
    assert result["jobs"] == {"jobs": [{"id": slow["id"]}, {"id": done["id"]}]}
    assert [job["id"] for job in result["listing"]] == [slow["id"], done["id"]]
    assert result["nodes"] == {"nodes": [os.uname().nodename]}
    assert result["stream"] == ["first", "second", "a,b"]
    assert result["cancel"] == {"Message": "Job is requested to cancel.", "id": str(slow["id"])}
    cancelled = result["cancelled"]
    assert (cancelled["result"], cancelled["returncode"], cancelled["exception"]["type"]) == ("CANCELED", 143, "cancel")
    assert result["unknown"] is None
    counts = handle.log.snapshot()
    if auth:  # one 401 with WWW-Authenticate, one exchange, then the bearer token for everything else
        assert counts["unauthenticated"] == 1 and counts["POST /v1/token"] == 1
    else:
        assert counts["unauthenticated"] == 0 and counts["POST /v1/token"] == 0


@needs_client
@pytest.mark.parametrize("auth", [False, True], ids=["single-user", "multi-user"])
def test_the_official_cli_submits_lists_and_shows_logs(make_flux_server, auth):
    handle = make_flux_server(auth=auth)
    submitted = json.loads(run_client(handle, "submit", "echo", "hello", "from", "the", "cli"))
    info = handle.wait(submitted["id"])
    assert info["result"] == "COMPLETED"
    assert run_client(handle, "logs", str(submitted["id"])) == "hello from the cli\n"
    assert str(submitted["id"]) in run_client(handle, "list-jobs")


def test_multi_user_mode_asks_for_a_token_and_refuses_wrong_ones(make_flux_server):
    handle = make_flux_server(auth=True)
    missing = handle.get("/v1/jobs")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert missing.json() == {"detail": "Not authenticated"}
    forged = jwt.encode({"sub": CREDENTIALS["user"], "exp": time.time() + 60}, "not-the-key-but-just-as-long-as-it" * 2, "HS256")
    refused = handle.get("/v1/jobs", headers={"Authorization": f"Bearer {forged}"})
    assert refused.status_code == 403 and refused.json() == {"detail": "Could not validate credentials"}

    def exchange(user, token):
        signed = jwt.encode({"user": user, "pass": token, "scope": "token"}, CREDENTIALS["secret_key"], "HS256")
        return requests.post(handle.api + "/v1/token", headers={"Authorization": f"Bearer {signed}"}, timeout=10)

    assert exchange(CREDENTIALS["user"], "wrong").status_code == 400
    assert exchange("mallory", CREDENTIALS["token"]).json() == {"Message": "Denied"}
    granted = exchange(CREDENTIALS["user"], CREDENTIALS["token"]).json()
    assert granted["token_type"] == "bearer"
    listing = handle.get("/v1/jobs", headers={"Authorization": f"Bearer {granted['access_token']}"})
    assert listing.status_code == 200 and listing.json() == {"jobs": []}


def test_requests_are_refused_before_their_body_is_read(make_flux_server):
    handle = make_flux_server(auth=True)
    unauthenticated = requests.post(handle.api + "/v1/jobs/submit", data=b"x" * 1000, timeout=10)
    assert unauthenticated.status_code == 401
    oversized = requests.post(handle.api + "/v1/token", data=b"x" * (1 << 20), timeout=10)
    assert oversized.status_code == 413
    assert handle.log.snapshot()["POST /v1/jobs/submit"] == 0 and handle.server.runner.jobs == {}


def test_jobs_run_without_a_shell_in_the_root_and_never_see_the_secrets(make_flux_server, monkeypatch):
    monkeypatch.setenv("FLUX_SECRET_KEY", "server-secret")
    monkeypatch.setenv("FLUX_TOKEN", "server-token")
    handle = make_flux_server()
    os.makedirs(os.path.join(handle.root, "work"))
    reply = requests.post(handle.api + "/v1/jobs/submit", timeout=10, json={
        "command": "sh -c 'pwd; env' ; echo not-a-shell", "workdir": "work", "envars": {"EXTRA": "1"}})
    info = handle.wait(reply.json()["id"])
    output = "".join(handle.server.runner.get(str(info["id"])).chunks)
    assert output.splitlines()[0] == os.path.join(handle.root, "work")
    assert "EXTRA=1" in output and "server-secret" not in output and "server-token" not in output
    assert info["returncode"] == 0  # ";" "echo" "not-a-shell" went to sh as arguments, not to a shell
    escape = requests.post(handle.api + "/v1/jobs/submit", json={"command": "true", "workdir": "../.."}, timeout=10)
    assert escape.status_code == 400 and "outside" in escape.json()["Errors"][0]
    empty = requests.post(handle.api + "/v1/jobs/submit", json={"command": ""}, timeout=10)
    assert empty.status_code == 400 and empty.json()["Errors"] == ["'command' is required."]


def test_a_job_over_its_runtime_is_killed_as_a_timeout(flux_server):
    info = flux_server.wait(flux_server.submit("sleep 20", runtime=0.3))
    assert (info["result"], info["returncode"], info["exception"]["type"]) == ("TIMEOUT", 143, "timeout")


def test_hpcfs_serve_flux_takes_its_secrets_from_the_environment(tmp_path):
    env = {**os.environ, "FLUX_REQUIRE_AUTH": "true", "FLUX_USER": CREDENTIALS["user"],
           "FLUX_TOKEN": CREDENTIALS["token"], "FLUX_SECRET_KEY": CREDENTIALS["secret_key"]}
    server = subprocess.Popen([sys.executable, "-m", "hpcfs", "serve", "flux", "--port", "0", "--root", str(tmp_path)],
                              env=env, stdout=subprocess.PIPE, text=True)
    try:
        banner = server.stdout.readline() + server.stdout.readline()
        api = re.search(r"at (http://127\.0\.0\.1:\d+)/v1/", banner).group(1)
        assert "multi-user" in banner and CREDENTIALS["token"] not in banner
        refused = requests.get(api + "/v1/jobs", timeout=10)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
        signed = jwt.encode({"user": CREDENTIALS["user"], "pass": CREDENTIALS["token"], "scope": "token"},
                            CREDENTIALS["secret_key"], "HS256")
        granted = requests.post(api + "/v1/token", headers={"Authorization": f"Bearer {signed}"}, timeout=10)
        assert granted.status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_reader_hanging_up_ends_its_output_stream(flux_server):
    jobid = flux_server.submit("sh -c 'echo started; sleep 30'")
    reply = flux_server.get(f"/v1/jobs/{jobid}/output/stream", stream=True)
    assert next(reply.iter_content(None)) == b"started\n"
    reply.close()
    deadline = time.monotonic() + 5
    while flux_server.server.http.httpd.connections:  # the handler stops waiting for a job nobody follows
        assert time.monotonic() < deadline, "the stream's handler outlived its reader"
        time.sleep(0.05)
