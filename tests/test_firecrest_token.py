"""FirecREST with a bearer token instead of client credentials (``token=@@VARIABLE``, ``@FILE``,
``oidc-agent:ACCOUNT``): the client then asks no token endpoint.  The real oidc-agent is driven in
test_oidc_agent.py; here its absence must be one clear line."""
import hashlib

import requests
from mounting import write_random
from test_cli import cli, isolated, ok, one_line_error  # noqa: F401  (fixtures)

from fixtures_firecrest import CLIENT_ID
from hpcfs.servers.firecrest.server import TOKEN


def test_a_given_token_replaces_the_client_credentials(cli, firecrest_server, tmp_path):
    source = write_random(f"{firecrest_server.root}/data.bin", 100_000)
    granted = requests.post(firecrest_server.server.token_url, timeout=10, data={
        "grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": firecrest_server.secret})
    env = {"FIRECREST_URL": firecrest_server.server.url, "MY_TOKEN": granted.json()["access_token"]}
    firecrest_server.log.reset()
    url = firecrest_server.plain_url("/data.bin") + "?token=@@MY_TOKEN"
    ok(cli("cp", url, str(tmp_path / "data.bin"), env=env))
    assert hashlib.sha256(open(tmp_path / "data.bin", "rb").read()).hexdigest() == \
        hashlib.sha256(open(source, "rb").read()).hexdigest()
    assert firecrest_server.log.total(TOKEN) == 0, "asked the token endpoint anyway"
    assert "credential: FixedToken()" in ok(cli("info", url, env=env)).stdout


def test_an_agent_token_without_an_agent_is_one_clear_line(cli, firecrest_server, tmp_path):
    env = {"FIRECREST_URL": firecrest_server.server.url, "OIDC_SOCK": str(tmp_path / "no-agent.sock")}
    message = one_line_error(cli("ls", firecrest_server.plain_url("/") + "?token=oidc-agent:work", env=env), 1)
    assert "oidc-agent" in message and "oidc-add work" in message, message
