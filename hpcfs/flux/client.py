"""The Flux RESTful API on the wire: the ``/v1`` job endpoints, and the multi-user mode's token exchange.

A server in single-user mode answers without authentication.  In multi-user mode it answers ``401`` with
``WWW-Authenticate``; the client then signs ``{"user", "pass", "scope": "token"}`` with the shared
``FLUX_SECRET_KEY`` (HS256, as flux-restful-client does), exchanges it at ``POST /v1/token`` for a bearer
token and repeats the request.  An expired bearer token is answered ``403``: one new exchange and one
repeat (the official client never renews, so its sessions die after the token's lifetime).
"""
import json
import threading
from typing import Iterator, List, Optional

import jwt

from .. import errors, net

# what a Flux server means by these statuses, where the shared map says otherwise: an expired token is
# answered 403, and the gateway in front of it answers 502-504 while Flux is down
STATUS_MEANINGS = {403: errors.AuthenticationFailed, 502: errors.Unavailable, 503: errors.Unavailable,
                   504: errors.Unavailable}


def stream_chunks(response: net.Response, where: str) -> Iterator[bytes]:
    """The chunks of a job's streamed output as they arrive; a broken connection is ``Unavailable``."""
    return net.iter_chunks(response, "the output stream", where)


class FluxClient:
    """Calls to one Flux RESTful API server; thread-safe (one requests session, one token)."""

    def __init__(self, base_url: str, user: Optional[str] = None, token: Optional[str] = None,
                 secret_key: Optional[str] = None, *, verify=True, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.user = user
        self._token, self._secret_key = token, secret_key
        self.timeout = timeout
        self._session = net.new_session(verify)
        self._bearer: Optional[str] = None
        self._lock = threading.Lock()

    def __repr__(self):
        return f"FluxClient({self.base_url!r}, user={self.user!r})"

    # -- endpoints --------------------------------------------------------------------------------------
    def jobs(self) -> List[dict]:
        """Every job's info, newest first: one ``jobs?details=true&listing=true`` request.

        Server versions read these flags from the query or from a JSON body: both are sent."""
        flags = {"details": "true", "listing": "true"}
        listing = self._json("GET", "/v1/jobs", "/jobs", params=flags, json=flags)
        if isinstance(listing, dict) and isinstance(listing.get("jobs"), list):  # ids only: details unknown
            return [self.job(str(item.get("id"))) or {"id": item.get("id")} for item in listing["jobs"]]
        if isinstance(listing, dict):
            listing = list(listing.values())
        if not isinstance(listing, list) or not all(isinstance(item, dict) and "id" in item for item in listing):
            raise errors.ProtocolError("the server's job listing is not a list of jobs", "/jobs")
        return listing

    def job(self, jobid: str) -> Optional[dict]:
        """One job's info; None for an id the server does not know (it answers ``null``)."""
        info = self._json("GET", f"/v1/jobs/{jobid}", f"/jobs/{jobid}")
        if info is not None and not (isinstance(info, dict) and "id" in info):
            raise errors.ProtocolError("the server's job info is not an object", f"/jobs/{jobid}")
        return info or None

    def output(self, jobid: str) -> bytes:
        """A finished job's output: the ``Output`` chunks joined (each keeps its newline)."""
        where = f"/jobs/{jobid}/output"
        body = self._json("GET", f"/v1/jobs/{jobid}/output", where)
        if isinstance(body, dict) and "Message" in body and "Output" not in body:
            return b""  # "The output does not exist yet": a job that printed nothing
        chunks = body.get("Output") if isinstance(body, dict) else None
        if not isinstance(chunks, list) or not all(isinstance(chunk, str) for chunk in chunks):
            raise errors.ProtocolError("the server's job output is not a list of lines", where)
        return "".join(chunks).encode()

    def open_stream(self, jobid: str) -> net.Response:
        """A job's output as the server streams it, from the start until the job ends: read it with
        :func:`stream_chunks`; closing the response (from any thread) ends the stream."""
        return self._request("GET", f"/v1/jobs/{jobid}/output/stream", f"/jobs/{jobid}/output", stream=True,
                             timeout=None)

    def nodes(self) -> dict:
        nodes = self._json("GET", "/v1/nodes", "/nodes.json")
        if not isinstance(nodes, dict):
            raise errors.ProtocolError("the server's node list is not an object", "/nodes.json")
        return nodes

    def close(self):
        self._session.close()

    # -- requests ---------------------------------------------------------------------------------------
    def _json(self, method: str, endpoint: str, where: str, **arguments):
        return net.json_body(self._request(method, endpoint, where, **arguments), where)

    def _request(self, method: str, endpoint: str, where: str, **arguments) -> net.Response:
        """One exchange; after a 401 (no token yet) or 403 (token expired), one token exchange and a repeat."""
        response = net.renew_and_replay(lambda: self._send(method, endpoint, where, **arguments), (401, 403),
                                        lambda: self._exchange_token(where), self._can_authenticate)
        return net.accepted(response, lambda failed: self._failure(failed, where))

    def _can_authenticate(self, response: net.Response) -> bool:
        return (response.status_code == 403 and self._bearer is not None) or "www-authenticate" in response.headers

    def _send(self, method: str, endpoint: str, where: str, *, headers=None, timeout: Optional[float] = -1,
              idempotent: Optional[bool] = None, **arguments) -> net.Response:
        headers = dict(headers or {})
        if self._bearer and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {self._bearer}"
        read_timeout = self.timeout if timeout == -1 else timeout
        # GETs only read; another POST is not repeated after a time-out unless the caller says it may be
        return net.send(self._session, method, self.base_url + endpoint,
                        idempotent=method == "GET" if idempotent is None else idempotent,
                        timeout=(10.0, read_timeout), path=where, what=f"{method} {endpoint}", headers=headers,
                        **arguments)

    def _exchange_token(self, where: str):
        """``POST /v1/token`` with the user and token signed by the secret key: a bearer token."""
        with self._lock:
            missing = [name for name, value in (("FLUX_USER", self.user), ("FLUX_TOKEN", self._token),
                                                ("FLUX_SECRET_KEY", self._secret_key)) if not value]
            if missing or self._secret_key is None:
                raise errors.AuthenticationFailed(
                    f"the server requires authentication: set {', '.join(missing)}", where)
            signed = jwt.encode({"user": self.user, "pass": self._token, "scope": "token"}, self._secret_key,
                                algorithm="HS256")
            # A second exchange only mints another token: safe to repeat when a pooled connection was closed
            response = self._send("POST", "/v1/token", where, headers={"Authorization": f"Bearer {signed}"},
                                  idempotent=True)
            try:
                token = response.json().get("access_token") if response.status_code == 200 else None
            except (*net.UNREADABLE_JSON, AttributeError):
                token = None
            finally:
                response.close()
            if not isinstance(token, str):
                raise errors.AuthenticationFailed(
                    f"the server refused the token of user {self.user} (HTTP {response.status_code})", where)
            self._bearer = token

    @staticmethod
    def _failure(response: net.Response, where: str) -> errors.HpcfsError:
        try:
            body = response.json()
            message = body.get("detail") or body.get("Message") if isinstance(body, dict) else None
        except net.UNREADABLE_JSON:
            message = None
        text = f"{message or json.dumps(response.text[:120])} (HTTP {response.status_code})"
        return net.error_for_status(response.status_code, text, where, STATUS_MEANINGS)
