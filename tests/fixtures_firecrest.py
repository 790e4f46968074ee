"""pytest fixtures for the local FirecREST server (see docs/architecture.md).

``firecrest_server`` runs ``hpcfs.servers.firecrest.FirecrestServer`` on 127.0.0.1 with the real server's
limits except where waiting would only slow tests down: a 50 ms command timeout (so an empty upload's
408 comes fast), 8 MiB staging parts and an upload job that checks the bucket every 50 ms.
``openapi_violations`` checks every exchange against shared/specs/firecrest-v2-openapi.json.
"""
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Dict, List, Tuple
from urllib.parse import quote, urlencode

import jsonschema
import pytest
import requests
from handles import ServerHandle, server_factory

from hpcfs.servers.firecrest import FirecrestServer

CLIENT_ID = "hpcfs-tests"
USERNAME = "alice"
TEST_LIMITS = {"command_timeout": 0.05, "ingress_poll": 0.05, "max_part_size": 8 * 1024 * 1024}


@dataclass
class FirecrestHandle(ServerHandle):
    server: FirecrestServer
    secret: str = field(repr=False)  # shown in failing tests' reports otherwise (CI logs)

    @property
    def netloc(self):
        """The API's address (a firecrest:// URL names the system; the API comes from ``env``)."""
        return f"{self.server.api.host}:{self.server.api.port}"

    @property
    def root(self):
        return self.server.root

    @property
    def env(self):
        """What a CLI subprocess needs to reach the server with ``plain_url``."""
        return {"FIRECREST_URL": self.server.url, "AUTH_TOKEN_URL": self.server.token_url,
                "FIRECREST_CLIENT_ID": CLIENT_ID, "FIRECREST_CLIENT_SECRET": self.secret}

    def plain_url(self, path="/"):
        return f"firecrest://{self.server.system}{quote(path)}"

    def url(self, path="/"):
        """The URL with everything, the secret included, for ``fs.open_fs`` and ``open_backend``."""
        query = urlencode({"url": self.server.url, "token_url": self.server.token_url,
                           "client_id": CLIENT_ID, "client_secret": self.secret})
        return f"{self.plain_url(path)}?{query}"


def start_firecrest(root, **settings) -> FirecrestHandle:
    """A started server on ``root``; ``settings`` are FirecrestServer arguments or limits."""
    secret = secrets.token_urlsafe(12)
    options = dict(TEST_LIMITS, **settings)
    server = FirecrestServer(str(root), {CLIENT_ID: (secret, USERNAME)}, **options).start()
    return FirecrestHandle(server, secret)


# What tests/test_cli.py's ``hpcfs serve firecrest`` differs in: the S3 staging port, and the variables that name
# the API, which the banner exports before its mount command.
def serve_arguments(users_file: str) -> List[str]:
    return ["--port", "0", "--s3-port", "0"]  # the client's id and secret come from the environment


def serve_connection(banner: str) -> Tuple[str, Dict[str, str]]:
    """The served root's URL and the variables a client needs, as the banner tells them."""
    exports = dict(re.findall(r"(FIRECREST_URL|AUTH_TOKEN_URL)=(\S+)", banner))
    return re.search(r"hpcfs mount (firecrest://\S+)", banner).group(1), exports


def rest_port(handle: FirecrestHandle) -> Tuple[Any, str, Callable[[], requests.Response]]:
    """tests/test_servers_lockdown.py's REST port: the API, a path that takes a body, an owner's request."""
    server = handle.server
    return server.api, "/token", lambda: requests.post(server.token_url, timeout=10, data={
        "grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": handle.secret})


@pytest.fixture
def make_firecrest_server(tmp_path):
    """Factory: ``make_firecrest_server(**settings)`` -> started handle; all are stopped afterwards."""
    yield from server_factory(tmp_path, "firecrest", start_firecrest)


@pytest.fixture
def firecrest_server(make_firecrest_server) -> FirecrestHandle:
    return make_firecrest_server()


# -- OpenAPI conformance --------------------------------------------------------------------------------
SPEC_PATH = os.path.join(os.path.dirname(__file__), "data", "firecrest-v2-openapi.json")  # FirecREST 2.x's own


@lru_cache(maxsize=1)
def openapi() -> dict:
    with open(SPEC_PATH) as handle:
        return json.load(handle)


@lru_cache(maxsize=1)
def _operations():
    return [(re.compile("^" + re.sub(r"\{\w+\}", "[^/]+", template) + "/?$"), template, methods)
            for template, methods in openapi()["paths"].items()]


def openapi_operation(method: str, path: str):
    """``(path template, operation)`` for a concrete request path; AssertionError if undocumented."""
    for regex, template, methods in _operations():
        if regex.match(path) and method.lower() in methods:
            return template, methods[method.lower()]
    raise AssertionError(f"{method} {path} is not in the OpenAPI document")


def _validate(instance, schema: dict, what: str):
    rooted = dict(schema, components=openapi()["components"])
    try:
        jsonschema.Draft202012Validator(rooted).validate(instance)
    except jsonschema.ValidationError as exc:
        raise AssertionError(f"{what} does not match the OpenAPI schema: {exc.message} at {list(exc.path)}") from None


def check_request(method: str, path: str, content_type: str, body: bytes):
    """A request body must be of a declared type, and a JSON one must match the ``requestBody`` schema."""
    template, op = openapi_operation(method, path)
    declared = (op.get("requestBody") or {}).get("content", {})
    if body and "application/json" in content_type:
        assert "application/json" in declared, f"{method} {template} takes no JSON body"
        _validate(json.loads(body), declared["application/json"]["schema"], f"request to {method} {template}")
    elif body:
        assert content_type.split(";")[0] in declared, f"{method} {template} takes no {content_type} body"


def check_response(method: str, path: str, status: int, content_type: str, body: bytes):
    """The status must be documented (exactly or as 4XX/5XX) and a JSON body must match its schema."""
    template, op = openapi_operation(method, path)
    responses = op["responses"]
    key = str(status) if str(status) in responses else f"{str(status)[0]}XX"
    assert key in responses, f"{method} {template} answered {status}, documented: {sorted(responses)}"
    schema = responses[key].get("content", {}).get("application/json", {}).get("schema")
    if schema is None:
        assert not body, f"{method} {template} answered {status} with a body the document does not declare"
    elif "application/json" in content_type:
        _validate(json.loads(body), schema, f"{status} reply of {method} {template}")


@pytest.fixture
def openapi_violations(firecrest_server):
    """Every API exchange with ``firecrest_server`` is checked against the OpenAPI document; the test
    asserts this list (of violations) is empty at its end."""
    violations = []

    def observe(request, response):
        if request.path == "/token":
            return
        try:
            if request.body_consumed or not request.content_length:  # a body the server refused unread stays so
                check_request(request.method, request.path, request.headers.get("Content-Type", ""),
                              request.body)
            if response is not None:
                check_response(request.method, request.path, response.status,
                               response.headers.get("Content-Type", ""), response.body)
        except AssertionError as exc:
            violations.append(str(exc))

    firecrest_server.server.observers.append(observe)
    return violations
