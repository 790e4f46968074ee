"""The S3 staging area behind FirecREST's ``transfer/upload`` and ``transfer/download``.

A small object store on its own port, as the real deployment has (moto or Ceph in front of the cluster):
path-style ``/{bucket}/{key}`` objects, presigned URLs that expire, multipart uploads (``PUT`` parts with
``ETag``, ``POST`` a ``<CompleteMultipartUpload>``), and ``GET`` with ``Range`` (206/416).  The bucket is the
user's name and objects are snapshots kept outside the served tree.
"""
import calendar
import hashlib
import hmac
import os
import secrets
import shutil
import threading
import time
import uuid
from typing import Callable, Dict, Iterable, Optional
from urllib.parse import quote, urlencode
from xml.etree import ElementTree

from ..common import Request, Response, RestApp

SIGNATURE = "X-Amz-Signature"


def _xml_error(status: int, code: str, message: str) -> Response:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>{uuid.uuid4().hex}</RequestId></Error>")
    return Response(status, body.encode(), {"Content-Type": "application/xml"})


class ObjectStore:
    """Objects and multipart uploads in ``directory``; ``public_url`` is where clients reach it."""

    def __init__(self, directory: str):
        self.directory = directory
        self.public_url = ""
        self._secret = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._objects: Dict[tuple, str] = {}  # (bucket, key) -> local file
        self._uploads: Dict[str, dict] = {}  # upload id -> {"bucket", "key", "parts": {n: (file, etag)}}

    # -- presigned URLs -------------------------------------------------------------------------------
    def presign(self, method: str, bucket: str, key: str, ttl: int, **params) -> str:
        path = f"/{bucket}/{quote(key)}"
        query = dict(params, **{"X-Amz-Algorithm": "AWS4-HMAC-SHA256",
                                "X-Amz-Date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
                                "X-Amz-Expires": str(ttl), "X-Amz-SignedHeaders": "host"})
        query[SIGNATURE] = self._sign(method, path, query)
        return f"{self.public_url}{path}?{urlencode(query)}"

    def _sign(self, method: str, path: str, query: dict) -> str:
        canonical = "\n".join([method, path] + [f"{k}={query[k]}" for k in sorted(query) if k != SIGNATURE])
        return hmac.new(self._secret, canonical.encode(), hashlib.sha256).hexdigest()

    def check(self, request: Request) -> Optional[Response]:
        """None if the request carries a valid, unexpired signature for its method and path."""
        query = {k: v[0] for k, v in request.query.items()}
        path = f"/{request.params['bucket']}/{quote(request.params['key'])}"
        method = "GET" if request.method == "HEAD" else request.method
        if not hmac.compare_digest(query.get(SIGNATURE, ""), self._sign(method, path, query)):
            return _xml_error(403, "SignatureDoesNotMatch",
                              "The request signature we calculated does not match the signature you provided.")
        issued = calendar.timegm(time.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
        if time.time() > issued + int(query["X-Amz-Expires"]):
            return _xml_error(403, "AccessDenied", "Request has expired")
        return None

    # -- objects --------------------------------------------------------------------------------------
    def new_upload(self, bucket: str, key: str) -> str:
        upload_id = uuid.uuid4().hex
        with self._lock:
            self._uploads[upload_id] = {"bucket": bucket, "key": key, "parts": {}}
        return upload_id

    def object_file(self, bucket: str, key: str) -> Optional[str]:
        with self._lock:
            return self._objects.get((bucket, key))

    def put_object_from(self, bucket: str, key: str, source_path: str):
        """Store a copy of a local file (what the egress job's multipart upload amounts to)."""
        target = os.path.join(self.directory, uuid.uuid4().hex)
        shutil.copyfile(source_path, target)
        self._install(bucket, key, target)

    def _install(self, bucket: str, key: str, local: str):
        with self._lock:
            old = self._objects.get((bucket, key))
            self._objects[(bucket, key)] = local
        if old:
            os.unlink(old)

    def put_part(self, upload_id: str, number: int, chunks: Iterable[bytes]) -> Optional[str]:
        """Store one part, written to disk piece by piece as it arrives (a part may be gigabytes)."""
        digest = hashlib.md5()
        target = os.path.join(self.directory, uuid.uuid4().hex)
        with open(target, "wb") as handle:
            for chunk in chunks:
                digest.update(chunk)
                handle.write(chunk)
        etag = f'"{digest.hexdigest()}"'
        with self._lock:
            upload = self._uploads.get(upload_id)
            if upload is None:
                os.unlink(target)
                return None
            previous = upload["parts"].get(number)
            upload["parts"][number] = (target, etag)
        if previous:
            os.unlink(previous[0])
        return etag

    def complete(self, upload_id: str, body: bytes) -> Response:
        with self._lock:
            upload = self._uploads.get(upload_id)
        if upload is None:
            return _xml_error(404, "NoSuchUpload", "The specified multipart upload does not exist.")
        try:
            listed = [(int(part.findtext("{*}PartNumber") or part.findtext("PartNumber") or ""),
                       (part.findtext("{*}ETag") or part.findtext("ETag") or "").strip('"'))
                      for part in ElementTree.fromstring(body).iter() if part.tag.endswith("Part")]
        except (ElementTree.ParseError, TypeError, ValueError):
            return _xml_error(400, "MalformedXML", "The XML you provided was not well-formed.")
        parts = upload["parts"]
        if not listed or any(n not in parts or parts[n][1].strip('"') != etag for n, etag in listed):
            return _xml_error(400, "InvalidPart", "One or more of the specified parts could not be found.")
        target = os.path.join(self.directory, uuid.uuid4().hex)
        with open(target, "wb") as out:
            for number, _ in sorted(listed):
                with open(parts[number][0], "rb") as piece:
                    shutil.copyfileobj(piece, out, 1 << 20)
        with self._lock:
            self._uploads.pop(upload_id, None)
        for local, _ in parts.values():
            os.unlink(local)
        self._install(upload["bucket"], upload["key"], target)
        reply = (f'<?xml version="1.0" encoding="UTF-8"?>\n<CompleteMultipartUploadResult><Bucket>{upload["bucket"]}'
                 f'</Bucket><Key>{upload["key"]}</Key></CompleteMultipartUploadResult>')
        return Response(200, reply.encode(), {"Content-Type": "application/xml"})


OBJECT_SERVED = "object served"  # in the request log: a GET that found its object


def build_app(store: ObjectStore, knobs, log, max_part_size: Callable[[], int]) -> RestApp:
    """The object store's HTTP face, sharing the FirecREST server's knobs and request log."""
    app = RestApp(knobs, log)

    @app.route("GET", "/{bucket}/{key:path}")
    def get_object(request: Request) -> Response:
        response = store.check(request) or _serve_object(store, request)
        if response.file_path is not None:  # the object was there (a look that found nothing is a 404)
            log.record(OBJECT_SERVED, request.path)
        return response

    @app.route("HEAD", "/{bucket}/{key:path}")
    def head_object(request: Request) -> Response:
        return store.check(request) or _serve_object(store, request)

    @app.route("PUT", "/{bucket}/{key:path}", max_body=max_part_size)
    def put_part(request: Request) -> Response:
        refused = store.check(request)  # the signature is in the URL: checked before the body is read
        if refused:
            return refused
        etag = store.put_part(request.arg("uploadId", ""), int(request.arg("partNumber", "0")),
                              request.body_chunks())
        if etag is None:
            return _xml_error(404, "NoSuchUpload", "The specified multipart upload does not exist.")
        return Response(200, b"", {"ETag": etag})

    @app.route("POST", "/{bucket}/{key:path}")
    def complete_upload(request: Request) -> Response:
        return store.check(request) or store.complete(request.arg("uploadId", ""), request.body)

    return app


def _serve_object(store: ObjectStore, request: Request) -> Response:
    local = store.object_file(request.params["bucket"], request.params["key"])
    if local is None:
        return _xml_error(404, "NoSuchKey", "The specified key does not exist.")
    return Response(file_path=local, headers={"Content-Type": "binary/octet-stream"})
