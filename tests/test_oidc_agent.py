"""``token=oidc-agent:ACCOUNT`` with the real oidc-agent (Debian's oidc-agent-cli, scripts/install).

Each test starts a private agent (``oidc-agent -d``: in the foreground, our child, its socket under
tmp_path, no autoload) and loads an account into it with ``oidc-gen``'s refresh-token flow against a small
OIDC provider emulated here (plain http on 127.0.0.1, which oidc-agent accepts; the agent itself asks it for
access tokens).  Every access token the provider issues is registered with the local UFTP server as the
demo user's bearer token, so ``hpcfs ls``/``cp`` run against it end to end.
"""
import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import List
from urllib.parse import parse_qs

import pytest
from fixtures_uftp import UFTP_USER
from mounting import HPCFS, sha256_file

from hpcfs import errors, oidc_agent

pytestmark = pytest.mark.skipif(not shutil.which("oidc-agent") or not shutil.which("oidc-gen"),
                                reason="oidc-agent-cli is not installed (scripts/install installs it)")

ACCOUNT = "hpc"
REFRESH_TOKEN = "rt-" + secrets.token_hex(8)


class Provider(ThreadingHTTPServer):
    """An OIDC provider for one client: discovery, and a token endpoint with the refresh_token grant whose
    access tokens the UFTP server accepts."""

    daemon_threads = True

    def __init__(self, uftp_tokens: dict, lifetime: int = 300):
        super().__init__(("127.0.0.1", 0), ProviderHandler)
        self.issuer = f"http://127.0.0.1:{self.server_address[1]}"
        self.uftp_tokens = uftp_tokens  # the UFTP server's bearer token -> user
        self.lifetime = lifetime
        self.issued: List[str] = []

    def issue(self) -> dict:
        token = "at-" + secrets.token_urlsafe(16)
        self.issued.append(token)
        self.uftp_tokens[token] = UFTP_USER
        return {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime,
                "refresh_token": REFRESH_TOKEN}

    def expire(self) -> None:
        """The UFTP server stops accepting every token issued so far (as for a token that expired, or was
        revoked, before the agent expected)."""
        for token in self.issued:
            self.uftp_tokens.pop(token, None)


class ProviderHandler(BaseHTTPRequestHandler):
    server: Provider

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path != "/.well-known/openid-configuration":
            return self._answer(404, {"error": "not_found"})
        issuer = self.server.issuer
        self._answer(200, {"issuer": issuer, "token_endpoint": issuer + "/token",
                           "authorization_endpoint": issuer + "/authorize", "jwks_uri": issuer + "/jwks",
                           "grant_types_supported": ["refresh_token"], "response_types_supported": ["code"],
                           "scopes_supported": ["openid", "offline_access"]})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        form = parse_qs(self.rfile.read(length).decode())
        if self.path != "/token" or form.get("grant_type") != ["refresh_token"]:
            return self._answer(400, {"error": "unsupported_grant_type"})
        if form.get("refresh_token") != [REFRESH_TOKEN]:
            return self._answer(400, {"error": "invalid_grant"})
        self._answer(200, self.server.issue())

    def _answer(self, status: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def start_provider(uftp_server, lifetime: int = 300) -> Provider:
    provider = Provider(uftp_server.server.tokens, lifetime)
    threading.Thread(target=provider.serve_forever, daemon=True).start()
    return provider


@pytest.fixture
def provider(uftp_server):
    provider = start_provider(uftp_server)
    yield provider
    provider.shutdown()
    provider.server_close()


@pytest.fixture
def agent_env(tmp_path):
    """The environment of a user whose private oidc-agent runs (no account loaded yet)."""
    config = tmp_path / "oidc-config"
    config.mkdir(mode=0o700)
    socket_path = str(tmp_path / "oidc.sock")
    env = {**os.environ, "OIDC_SOCK": socket_path, "OIDC_CONFIG_DIR": str(config),
           "OIDC_ENCRYPTION_PW": secrets.token_hex(8)}
    agent = subprocess.Popen(["oidc-agent", "-d", "--quiet", "--no-autoload", f"--socket-path={socket_path}"],
                             env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(socket_path):
            assert agent.poll() is None, f"oidc-agent exited: {agent.stderr.read().decode()}"
            assert time.monotonic() < deadline, "oidc-agent did not create its socket"
            time.sleep(0.05)
        yield env
    finally:
        agent.terminate()
        agent.wait(10)


def add_account(env: dict, issuer: str, account: str = ACCOUNT) -> None:
    """``oidc-gen`` without a prompt: a registered client, the refresh-token flow, the password from the
    environment; it asks the provider for a first access token and loads the account into the agent."""
    command = ["oidc-gen", "--manual", f"--iss={issuer}", "--client-id=hpcfs-test", "--client-secret=s3cret",
               f"--rt={REFRESH_TOKEN}", "--scope=openid offline_access", "--redirect-uri=http://localhost:8080",
               "--pw-env", "--no-url-call", "--confirm-default", "--prompt=none", account]
    result = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def agent(agent_env, provider):
    add_account(agent_env, provider.issuer)
    return agent_env


def hpcfs(env: dict, *args):
    return subprocess.run(HPCFS + list(args), env=env, capture_output=True, text=True, timeout=120)


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result


def cli_env(agent_env: dict, uftp_server) -> dict:
    hidden = ("UFTP_USER", "UFTP_PASSWORD", "UFTP_TOKEN", "UFTP_IDENTITY")
    return {**{name: value for name, value in agent_env.items() if name not in hidden},
            "HPCFS_CA_FILE": uftp_server.server.cert_file}


def agent_url(uftp_server, path="/", account=ACCOUNT):
    return uftp_server.plain_url(path) + f"?token=oidc-agent:{account}"


# -- the CLI with the real agent ------------------------------------------------------------------------
def test_ls_and_cp_with_a_token_from_oidc_agent(agent, provider, uftp_server, tmp_path):
    uftp_server.allow_rapid_commands()
    env = cli_env(agent, uftp_server)
    payload = os.urandom(300_000)
    (tmp_path / "up.bin").write_bytes(payload)

    ok(hpcfs(env, "cp", str(tmp_path / "up.bin"), agent_url(uftp_server, "/data.bin")))
    with open(os.path.join(uftp_server.root, "data.bin"), "rb") as stored:
        assert stored.read() == payload
    assert "data.bin" in ok(hpcfs(env, "ls", agent_url(uftp_server))).stdout
    ok(hpcfs(env, "cp", agent_url(uftp_server, "/data.bin"), str(tmp_path / "down.bin")))
    assert sha256_file(str(tmp_path / "down.bin")) == sha256_file(str(tmp_path / "up.bin"))
    # the agent reused its token for every run: one from oidc-gen's setup, none since
    assert len(provider.issued) == 1


def test_a_token_the_server_refuses_is_replaced_by_a_new_one_from_the_agent(agent, provider, uftp_server,
                                                                              tmp_path):
    uftp_server.allow_rapid_commands()
    env = cli_env(agent, uftp_server)
    (tmp_path / "up.bin").write_bytes(b"first")
    ok(hpcfs(env, "cp", str(tmp_path / "up.bin"), agent_url(uftp_server, "/a.txt")))
    provider.expire()  # the agent still holds the token, which has minutes to live by its account

    assert ok(hpcfs(env, "cat", agent_url(uftp_server, "/a.txt"))).stdout == "first"
    assert len(provider.issued) == 2  # asked again after the 401, and the new one worked
    assert provider.issued[-1] in uftp_server.server.tokens


def test_a_token_about_to_expire_is_not_reused(agent_env, uftp_server, tmp_path):
    """The provider issues tokens living less than the minute hpcfs asks for (``min_valid_period``): the
    agent refreshes before each use, so no run gets a token that expires under it."""
    provider = start_provider(uftp_server, lifetime=20)
    try:
        add_account(agent_env, provider.issuer)
        uftp_server.allow_rapid_commands()
        env = cli_env(agent_env, uftp_server)
        for _ in range(2):
            issued_before = len(provider.issued)
            ok(hpcfs(env, "ls", agent_url(uftp_server)))
            assert len(provider.issued) > issued_before  # a fresh token, not the one from before
    finally:
        provider.shutdown()
        provider.server_close()


def test_an_account_the_agent_has_not_loaded_is_one_line(agent, uftp_server):
    result = hpcfs(cli_env(agent, uftp_server), "ls", agent_url(uftp_server, account="nobody"))
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, result.stderr
    assert "account not loaded" in result.stderr and "oidc-add nobody" in result.stderr


# -- the client on its own ----------------------------------------------------------------------------
def test_no_agent_running_says_how_to_start_one(monkeypatch, tmp_path):
    monkeypatch.delenv("OIDC_SOCK", raising=False)
    with pytest.raises(errors.AuthenticationFailed, match=r"OIDC_SOCK is not set.*eval \$\(oidc-agent\)"):
        oidc_agent.access_token(ACCOUNT)
    monkeypatch.setenv("OIDC_SOCK", str(tmp_path / "gone.sock"))
    with pytest.raises(errors.AuthenticationFailed, match=rf"not running at .*gone.sock.*oidc-add {ACCOUNT}"):
        oidc_agent.access_token(ACCOUNT)


def test_agent_tokens_ask_for_a_new_token_only_after_a_refusal(agent, provider, monkeypatch):
    monkeypatch.setenv("OIDC_SOCK", agent["OIDC_SOCK"])
    tokens = oidc_agent.AgentTokens(ACCOUNT)
    first = tokens.token()
    assert tokens.token() == first and first in uftp_tokens(provider)
    assert ACCOUNT in repr(tokens) and first not in repr(tokens)
    tokens.discard("some other token")  # another thread's refusal of a token already replaced
    assert tokens.token() == first
    tokens.discard(first)
    second = tokens.token()
    assert second != first and second == provider.issued[-1]
    assert set(tokens.issued()) == {first, second}


def uftp_tokens(provider):
    return provider.uftp_tokens
