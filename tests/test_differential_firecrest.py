"""The FirecREST emulator (hpcfs.servers.firecrest) against the real FirecREST v2 of ``../shared/peers``
(system ``cluster``): the same ``ops/*`` requests, made with plain ``requests`` and a token, go to both,
and status codes and bodies must agree once times, users, system names and the base directory are
normalised. A difference is either fixed in the emulator or listed in KNOWN_DIFFERENCES below and in
docs/servers.md ("Differences from the real servers"), so a new one fails this test."""
import json
import os
import re

import pytest
import requests

from fixtures_firecrest import start_firecrest

pytestmark = pytest.mark.timeout(120)
MIB = 1 << 20
# step -> why the emulator's body differs on purpose (docs/servers.md); the status codes must still agree
KNOWN_DIFFERENCES = {
    "head bad lines": "FirecREST's validation message embeds pydantic's error dict and its own source file and "
                      "line; the emulator gives the summary (same status, errorType and field)",
}
VOLATILE_KEYS = {"lastModified", "user", "group", "ino", "dev", "uid", "gid", "atime", "ctime", "mtime"}


class Api:
    """Plain requests to one server's ``/filesystem/SYSTEM/ops/...`` with a client-credentials token."""

    def __init__(self, url: str, token_url: str, client_id: str, secret: str, system: str):
        reply = requests.post(token_url, data={"grant_type": "client_credentials", "client_id": client_id,
                                               "client_secret": secret}, timeout=30)
        reply.raise_for_status()
        # one connection per request: uvicorn closes a kept-alive connection after some errors
        self.headers = {"Authorization": f"Bearer {reply.json()['access_token']}", "Connection": "close"}
        self.base_url = f"{url}/filesystem/{system}"
        self.system = system

    def __call__(self, method: str, op: str, **kwargs):
        try:
            reply = requests.request(method, f"{self.base_url}/{op}", headers=self.headers, timeout=60, **kwargs)
        except requests.ConnectionError as exc:  # a server that drops the connection answers nothing
            return "no reply", type(exc).__name__
        try:
            body = reply.json()
        except ValueError:
            body = reply.text
        return reply.status_code, body


def dialogue(api: Api, base: str) -> list:
    """``(step, (status, body))`` for the same requests in the same order."""
    file, sub = f"{base}/hello.txt", f"{base}/sub"
    steps = [
        ("mkdir", "POST", "ops/mkdir", {"json": {"path": sub, "parent": False}}),
        ("mkdir again", "POST", "ops/mkdir", {"json": {"path": sub, "parent": False}}),
        ("mkdir in missing", "POST", "ops/mkdir", {"json": {"path": f"{base}/no/sub", "parent": False}}),
        ("mkdir -p", "POST", "ops/mkdir", {"json": {"path": f"{base}/deep/er", "parent": True}}),
        ("upload", "POST", "ops/upload", {"params": {"path": base},
                                          "files": {"file": ("hello.txt", b"hello firecrest\n")}}),
        ("upload to missing dir", "POST", "ops/upload", {"params": {"path": f"{base}/missing"},
                                                         "files": {"file": ("x", b"x")}}),
        ("ls", "GET", "ops/ls", {"params": {"path": base}}),
        ("ls a file", "GET", "ops/ls", {"params": {"path": file}}),
        ("ls missing", "GET", "ops/ls", {"params": {"path": f"{base}/missing"}}),
        ("ls relative", "GET", "ops/ls", {"params": {"path": "relative/path"}}),
        ("ls without path", "GET", "ops/ls", {}),
        ("stat", "GET", "ops/stat", {"params": {"path": file}}),
        ("stat missing", "GET", "ops/stat", {"params": {"path": f"{base}/missing"}}),
        ("file", "GET", "ops/file", {"params": {"path": file}}),
        ("checksum", "GET", "ops/checksum", {"params": {"path": file}}),
        ("checksum of a directory", "GET", "ops/checksum", {"params": {"path": sub}}),
        ("head", "GET", "ops/head", {"params": {"path": file, "lines": 1}}),
        ("head bad lines", "GET", "ops/head", {"params": {"path": file, "lines": "abc"}}),
        ("view", "GET", "ops/view", {"params": {"path": file, "offset": 2, "size": 5}}),
        ("download", "GET", "ops/download", {"params": {"path": file}}),
        ("download a directory", "GET", "ops/download", {"params": {"path": sub}}),
        ("download missing", "GET", "ops/download", {"params": {"path": f"{base}/missing"}}),
        ("chmod", "PUT", "ops/chmod", {"json": {"path": file, "mode": "600"}}),
        ("chmod bad mode", "PUT", "ops/chmod", {"json": {"path": file, "mode": "999"}}),
        ("chmod missing", "PUT", "ops/chmod", {"json": {"path": f"{base}/missing", "mode": "600"}}),
        ("stat after chmod", "GET", "ops/stat", {"params": {"path": file}}),
        ("symlink", "POST", "ops/symlink", {"json": {"path": file, "linkPath": f"{base}/link"}}),
        ("ls with link", "GET", "ops/ls", {"params": {"path": base}}),
        ("rm missing", "DELETE", "ops/rm", {"params": {"path": f"{base}/missing"}}),
        ("rm directory", "DELETE", "ops/rm", {"params": {"path": f"{base}/deep"}}),
        ("rm", "DELETE", "ops/rm", {"params": {"path": file}}),
        ("ls at the end", "GET", "ops/ls", {"params": {"path": base}}),
        ("download too large", "GET", "ops/download", {"params": {"path": f"{base}/big.bin"}}),
    ]
    return [(name, api(method, op, **kwargs)) for name, method, op, kwargs in steps]


def normalise(value, base: str, system: str):
    """Times, owners, inode numbers, the system name and the base directory become placeholders."""
    if isinstance(value, dict):
        if value.get("type") == "l":  # a link's size is its target's length, which the base changes
            value = dict(value, size="<link size>")
        return {key: f"<{key}>" if key in VOLATILE_KEYS else normalise(item, base, system)
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalise(item, base, system) for item in value]
    if isinstance(value, str):
        value = value.replace(base, "<BASE>").replace(f"'{system}'", "'<SYSTEM>'")
        return re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[\d.+:Z-]*", "<TIME>", value)
    return value


def transcript(api: Api, directory: str, base: str) -> list:
    """The dialogue below ``base`` (the server's name for ``directory`` on this machine)."""
    os.makedirs(directory)
    with open(os.path.join(directory, "big.bin"), "wb") as handle:  # above max_ops_file_size (5 MiB)
        handle.truncate(6 * MIB)
    return [(step, normalise(reply, base, api.system)) for step, reply in dialogue(api, base)]


@pytest.fixture
def emulator(tmp_path):
    handle = start_firecrest(tmp_path, command_timeout=5)
    yield handle
    handle.server.stop()


def test_the_emulator_answers_like_the_real_firecrest(emulator, real_firecrest_cluster):
    real = real_firecrest_cluster
    real_api = Api(real.env["FIRECREST_URL"], real.env["AUTH_TOKEN_URL"], real.env["FIRECREST_CLIENT_ID"],
                   real.env["FIRECREST_CLIENT_SECRET"], real.system)
    mine_api = Api(emulator.env["FIRECREST_URL"], emulator.env["AUTH_TOKEN_URL"],
                   emulator.env["FIRECREST_CLIENT_ID"], emulator.env["FIRECREST_CLIENT_SECRET"],
                   emulator.server.system)
    theirs = transcript(real_api, os.path.join(real.root, "differential"), os.path.join(real.root, "differential"))
    mine = transcript(mine_api, os.path.join(str(emulator.root), "differential"), "/differential")
    differences = {step: (a, b) for (step, a), (_, b) in zip(mine, theirs) if a != b}
    unexpected = sorted(set(differences) - set(KNOWN_DIFFERENCES))
    assert not unexpected, "\n".join(
        f"{step}:\n  emulator: {json.dumps(differences[step][0])}\n  FirecREST: {json.dumps(differences[step][1])}"
        for step in unexpected)
    assert set(differences) == set(KNOWN_DIFFERENCES), "a listed difference is gone: drop it from the list"
    assert all(mine_reply[0] == their_reply[0] for mine_reply, their_reply in differences.values())
