"""A UNICORE/X storage as an hpcfs backend: one storage (a site's ``HOME``, a job's ``JOBID-uspace`` working
directory) is one tree.

A directory's properties carry its listing with every entry's attributes, so ``list`` is one request and
``stat`` another.  Reads are HTTP ranges of the file's content (the core's readahead and parallel ranged
reads run on them); a run of readahead blocks is one streamed range, handed over block by block.  An upload
is one ``PUT``, so the core spools what is written and sends it on close; renaming is the server's own
``rename`` action, instant, so the core publishes uploads by renaming a partial name.  The server deletes
directories recursively: ``rmdir`` looks first that the directory is empty.
"""
import datetime
import logging
import posixpath
from typing import BinaryIO, Callable, List, Optional, Tuple

from .. import errors, net
from ..backend import DIRECTORY, FILE, Backend, Capabilities, Entry, normalize
from ..uftp.auth import BasicCredential, Credential, token_credential
from ..urls import ParsedURL
from .client import UnicoreClient, iter_body
from .options import UnicoreOptions

log = logging.getLogger("hpcfs.unicore")

STORAGES = "/rest/core/storages/"
LARGEST_SIZE = (1 << 63) - 1  # off_t
TIME_FORMATS = ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z")  # UNICORE: 2024-05-01T12:00:00+0200
BITS = (0o400, 0o200, 0o100, 0o40, 0o20, 0o10, 0o4, 0o2, 0o1)  # r w x of owner, group, others


def parse_time(text) -> float:
    """``lastAccessed`` (UNICORE's name for the modification time) as a timestamp; 0 if unreadable."""
    for form in TIME_FORMATS:
        try:
            return datetime.datetime.strptime(str(text), form).timestamp()
        except ValueError:
            continue
    return 0.0


def parse_mode(properties: dict, is_dir: bool) -> int:
    """Permission bits from ``unixPermissions`` (``rwxr-x---``) where the server gives it, else from
    ``permissions``, what the user may do (``rwx``), as the owner's bits; else the usual defaults."""
    unix = str(properties.get("unixPermissions") or "")[-9:]
    if len(unix) == 9 and set(unix) <= set("rwxst-"):
        return sum(bit for letter, bit in zip(unix, BITS) if letter != "-")
    user = str(properties.get("permissions") or "")
    if len(user) == 3 and set(user) <= set("rwx-"):
        return sum(bit for letter, bit in zip(user, BITS) if letter != "-")
    return 0o755 if is_dir else 0o644


def entry_from(name: str, properties, where: str) -> Entry:
    if not isinstance(properties, dict) or not isinstance(properties.get("isDirectory"), bool):
        raise errors.ProtocolError(f"unexpected properties for {name or '/'}: {str(properties)[:80]}", where)
    is_dir = properties["isDirectory"]
    mtime = parse_time(properties.get("lastAccessed"))
    if is_dir:
        return Entry(name, DIRECTORY, 0, mtime, parse_mode(properties, True))
    try:
        size = int(properties.get("size", 0))
    except (TypeError, ValueError, OverflowError):
        size = -1
    if not 0 <= size <= LARGEST_SIZE:
        raise errors.ProtocolError(f"unexpected size {str(properties.get('size'))[:40]} for {name}", where)
    return Entry(name, FILE, size, mtime, parse_mode(properties, False),
                 token=f"{size}:{properties.get('lastAccessed')}")


def child_name(key, where: str) -> str:
    """The name in a listing key: the storage path of the child (``/dir/name``, maybe with a trailing ``/``)."""
    name = posixpath.basename(str(key).rstrip("/"))
    if not name or name in (".", "..") or "\0" in name:
        raise errors.ProtocolError(f"unexpected name in a directory listing: {str(key)[:80]!r}", where)
    return name


class UnicoreBackend(Backend):
    """One UNICORE/X storage; ``/`` is the storage's root."""

    def __init__(self, client: UnicoreClient, parallel: int = 4):
        self.client = client
        self.capabilities = Capabilities(ranged_reads=True, rename="instant", max_parallel=parallel)

    # -- metadata ---------------------------------------------------------------------------------------
    def stat(self, path: str) -> Entry:
        path = normalize(path)
        return entry_from(posixpath.basename(path), self.client.properties(path), path)

    def list(self, path: str) -> List[Entry]:
        path = normalize(path)
        properties = self.client.properties(path)
        if not entry_from("", properties, path).is_dir:
            raise errors.NotADirectory("not a directory", path)
        content = properties.get("content") or {}
        if not isinstance(content, dict):
            raise errors.ProtocolError("a directory's content is not an object", path)
        entries = [entry_from(child_name(key, path), value, path) for key, value in content.items()]
        return sorted(entries, key=lambda entry: entry.name)

    # -- data -------------------------------------------------------------------------------------------
    def read_range(self, path: str, offset: int, length: int) -> bytes:
        pieces: List[bytes] = []
        self.read_pieces(path, offset, length, max(length, 1), pieces.append)
        return b"".join(pieces)

    def read_pieces(self, path: str, offset: int, length: int, piece_size: int,
                    deliver: Callable[[bytes], None]) -> None:
        """One streamed ``Range`` GET for the whole run, cut into ``piece_size`` pieces as it arrives."""
        if length <= 0:
            return
        path = normalize(path)
        response = self.client.open_range(path, offset, length)
        if response.status_code == 416:  # nothing at or after offset: end of file
            response.close()
            return
        skip = offset if response.status_code == 200 else 0  # a server that ignored Range sent it all
        buffer, left = bytearray(), length
        for chunk in iter_body(response, path):
            if skip:
                cut = min(skip, len(chunk))
                chunk, skip = chunk[cut:], skip - cut
            buffer += chunk[:left]
            left -= min(len(chunk), left)
            while len(buffer) >= piece_size:
                deliver(bytes(buffer[:piece_size]))
                del buffer[:piece_size]
            if not left:
                response.close()
                break
        if buffer:
            deliver(bytes(buffer))

    def read_whole(self, path: str, sink: BinaryIO) -> None:
        path = normalize(path)
        response = self.client.open_range(path, 0, None)
        net.stream_into(response, sink, "the download", path, self.client.storage_url)

    def write_whole(self, path: str, source: BinaryIO, size: int) -> None:
        self.client.upload(normalize(path), source, size)

    # -- namespace --------------------------------------------------------------------------------------
    def mkdir(self, path: str) -> None:
        path = normalize(path)
        if self._exists(path):  # the server makes directories as `mkdir -p` does, quietly
            raise errors.AlreadyExists("exists", path)
        self.client.mkdir(path)

    def remove(self, path: str) -> None:
        path = normalize(path)
        if self.stat(path).is_dir:  # DELETE would take the whole directory
            raise errors.IsADirectory("is a directory", path)
        self.client.delete(path)

    def rmdir(self, path: str) -> None:
        path = normalize(path)
        if path == "/":
            raise errors.PermissionDenied("the root of the storage cannot be removed", path)
        if self.list(path):  # the server deletes recursively: look first
            raise errors.DirectoryNotEmpty("directory not empty", path)
        self.client.delete(path)

    def rename(self, src: str, dst: str) -> None:
        src, dst = normalize(src), normalize(dst)
        if src != dst:
            self.client.rename(src, dst)

    def _exists(self, path: str) -> bool:
        try:
            self.client.properties(path)
        except errors.NotFound:
            return False
        return True

    # -- lifecycle --------------------------------------------------------------------------------------
    def describe(self) -> dict:
        properties = self.client.storage_properties()
        return {"protocol": "UNICORE/X storage", "storage": self.client.storage_url,
                "credentials": self.client.credential.kind, "mount_point": properties.get("mountPoint"),
                "protocols": properties.get("protocols"), "parallel": self.capabilities.max_parallel}

    def close(self) -> None:
        self.client.close()


# -- URLs -----------------------------------------------------------------------------------------------
def split_storage_path(path: str) -> Tuple[str, str]:
    """``(storage path, root)`` from ``/SITE/rest/core/storages/NAME[:/dir]``: the storage name is one segment,
    so the root starts at the first ``:`` after it (a later ``:`` belongs to the directory)."""
    prefix, marker, rest = path.partition(STORAGES)
    name, colon, root = rest.partition(":")
    if not marker or not name or "/" in name.rstrip("/"):
        raise errors.UsageError("a unicore:// URL names a storage: "
                                "unicore://USER@HOST:PORT/SITE/rest/core/storages/NAME:/path")
    return f"{prefix}{STORAGES}{name.rstrip('/')}", normalize(root if colon else "/")


def make_credential(settings: UnicoreOptions) -> Credential:
    """A bearer token (``token``, ``UNICORE_TOKEN``), else user and password (URL, options, environment)."""
    if settings.token:
        return token_credential(settings.token)
    if not settings.user:
        raise errors.UsageError("no UNICORE credentials: put the user in the URL (unicore://USER@HOST...) or set "
                                "UNICORE_USER and UNICORE_PASSWORD, or give a token (UNICORE_TOKEN)")
    if settings.password is None:
        raise errors.UsageError(f"no password for UNICORE user {settings.user}: set UNICORE_PASSWORD or use a "
                                "profile")
    return BasicCredential(settings.user, settings.password)


def backend_from_url(url: ParsedURL, settings: UnicoreOptions):
    """``unicore://[USER[:PASSWORD]@]HOST[:PORT]/SITE/rest/core/storages/NAME[:/path]`` ->
    ``(UnicoreBackend, root)``: https with the certificate checked (``ca_file``, ``verify``), except to a
    loopback host, where http is the default; ``tls=0`` asks for plain http elsewhere, with a warning."""
    if not url.host:
        raise errors.UsageError("unicore:// URL needs a host: unicore://USER@HOST:PORT/SITE/rest/core/storages/NAME:/")
    storage_path, root = split_storage_path(url.path)
    asked: Optional[str] = None if settings.tls is None else ("https" if settings.tls else "http")
    scheme = net.http_scheme(url.host, asked, log, "UNICORE/X at %s over plain http, as asked: the credentials "
                                                   "and data cross the network unencrypted")
    client = UnicoreClient(net.base_url(scheme, url.host, url.port) + storage_path, make_credential(settings),
                           verify=net.parse_verify(settings.verify, settings.ca_file), timeout=settings.timeout,
                           upload_timeout=settings.upload_timeout, pool_size=max(settings.parallel, 4))
    return UnicoreBackend(client, settings.parallel), root
