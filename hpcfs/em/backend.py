"""The DPhi Space EM API as an hpcfs backend: volumes at the top, each volume's files below.

Tree: ``/`` lists the volumes -- pod names the user configured, those ``/em/pvc/list`` returns where the
server has it, and ``_default`` for the volume used when no pod name is sent (``_`` cannot occur in a pod
name, so it never collides).  ``/POD/a/b`` is file ``a/b`` of volume ``POD``.  On the real service a pod
name it has not seen *creates* a volume, so a name nobody configured or listed is answered here with
NotFound and never sent (file managers probe ``/.Trash-1000``, ``/autorun.inf`` ...).

The API has no per-path stat and no ranges: one ``files/list`` call returns a volume's whole tree, and
that listing serves every ``list``/``stat`` in the volume for ``listing_ttl`` seconds (pods change
volumes behind our back, so it must expire).  Our own writes patch the cached listing, so they are
visible at once without another listing.  Reads download whole files (``Entry.token`` carries the
listing's size, time and hash for the core's whole-file cache).  The API keeps no directories of its
own, only the path prefixes of files, so ``mkdir`` uploads an empty marker file (``MARKER``) into the new
directory, as rclone and S3 tools do: the directory then exists on the server for every later process,
and every listing leaves the marker out.  ``rename`` copies (download, upload,
delete); ``rmdir`` checks emptiness on a fresh listing first because the server deletes recursively.
"""
import datetime
import io
import logging
import os
import posixpath
import tempfile
import threading
import time
from typing import BinaryIO, Dict, List, Optional, Set, Tuple

from .. import errors, net
from ..backend import DIRECTORY, FILE, Backend, Capabilities, Entry, normalize
from ..urls import ParsedURL
from .client import DEFAULT_VOLUME, EMClient, can_upload_name, is_pod_name, seekable_copy
from .options import EMOptions

log = logging.getLogger("hpcfs.em")

GIB = 1024**3
DIR_MODE = 0o755
LARGEST_SIZE = (1 << 63) - 1  # off_t
MARKER = ".hpcfs-directory"  # the empty file that keeps a directory made by mkdir; never listed


def _parse_time(text) -> float:
    """The listing's ``YYYY-MM-DD-HH-MM`` (no zone given; taken as UTC) as a timestamp; 0 if unreadable."""
    try:
        moment = datetime.datetime.strptime(str(text), "%Y-%m-%d-%H-%M")
    except ValueError:
        return 0.0
    return moment.replace(tzinfo=datetime.timezone.utc).timestamp()


def _entry_from_node(node) -> Entry:
    if not isinstance(node, dict) or node.get("type") not in ("file", "directory"):
        raise errors.ProtocolError(f"unexpected node in a volume listing: {str(node)[:80]}")
    name = node.get("name")
    if not isinstance(name, str) or not name or "/" in name or "\0" in name or name in (".", ".."):
        raise errors.ProtocolError(f"unexpected name in a volume listing: {name!r}")
    if node["type"] == "directory":
        return Entry(name, DIRECTORY, 0, _parse_time(node.get("time")), DIR_MODE)
    try:
        size = int(node.get("size", 0))
    except (TypeError, ValueError, OverflowError):
        size = -1
    if not 0 <= size <= LARGEST_SIZE:
        raise errors.ProtocolError(f"unexpected size {str(node.get('size'))[:40]} for {name}")
    token = f"{size}:{node.get('time')}:{node.get('hash')}"  # minute-resolution time alone is not enough
    return Entry(name, FILE, size, _parse_time(node.get("time")), 0o644, token=token)


def _contents(node: dict, path: str) -> list:
    contents = node.get("contents") or []
    if not isinstance(contents, list):
        raise errors.ProtocolError(f"the contents of directory {path} in a volume listing are not a list")
    return contents


class VolumeListing:
    """One volume's tree from one ``files/list`` call, indexed by path relative to the volume."""

    def __init__(self, nodes, fetched_at: float, where: Optional[str] = None):
        """``where`` (the volume's tree path) is what errors about malformed nodes name."""
        self.fetched_at = fetched_at
        self.entries: Dict[str, Entry] = {"": Entry("", DIRECTORY, mode=DIR_MODE)}
        self.children: Dict[str, Dict[str, Entry]] = {"": {}}
        try:
            if not isinstance(nodes, list):
                raise errors.ProtocolError("a volume listing is not a list of nodes")
            self._add_nodes("", nodes)
        except errors.ProtocolError as exc:
            exc.path = exc.path or where
            raise

    def _add_nodes(self, parent: str, nodes):
        for node in nodes:
            entry = _entry_from_node(node)
            if entry.name == MARKER and not entry.is_dir:  # its directory is listed; the marker is not
                continue
            path = posixpath.join(parent, entry.name)
            self.put(path, entry)
            if entry.is_dir:
                self._add_nodes(path, _contents(node, path))

    def put(self, path: str, entry: Entry):
        """Record ``entry`` at ``path``, with the directories leading to it (uploads create them)."""
        parent, name = posixpath.split(path)
        if parent not in self.children:
            self.put(parent, Entry(posixpath.basename(parent), DIRECTORY, 0, time.time(), DIR_MODE))
        self.drop(path)
        self.entries[path] = entry
        self.children[parent][name] = entry
        if entry.is_dir:
            self.children[path] = {}

    def drop(self, path: str):
        """Forget ``path`` and everything below it."""
        parent, name = posixpath.split(path)
        self.children.get(parent, {}).pop(name, None)
        dropped = self.entries.pop(path, None)
        if dropped is not None and dropped.is_dir:  # only a directory has anything below it (and a
            self.children.pop(path, None)  # listing of 20,000 files must not scan them for each one)
            for known in [p for p in self.entries if p.startswith(path + "/")]:
                del self.entries[known]
                self.children.pop(known, None)

    def files_below(self, path: str) -> List[str]:
        return sorted(p for p, e in self.entries.items() if not e.is_dir and p.startswith(path + "/"))

    def dirs_below(self, path: str) -> List[str]:
        return sorted(p for p, e in self.entries.items() if e.is_dir and p.startswith(path + "/"))


def _refuse_unstorable(name: str, where: str) -> None:
    if not can_upload_name(name):
        raise errors.InvalidPath("the EM API cannot store this file name (\\ or unprintable characters)", where)
    if name == MARKER:
        raise errors.InvalidPath(f"{MARKER} is reserved: hpcfs marks directories made by mkdir with it", where)


class EMBackend(Backend):
    """Volumes of one EM API account as one tree; every request goes through one serialized client."""

    def __init__(self, client: EMClient, pods=(), *, listing_ttl: float = 5.0, volumes_ttl: float = 30.0,
                 max_upload: int = 2 * GIB, max_files: int = 100):
        self.client = client
        self.listing_ttl, self.volumes_ttl = listing_ttl, volumes_ttl
        self.max_upload, self.max_files = max_upload, max_files
        self.capabilities = Capabilities(
            ranged_reads=False, ranged_writes=False, rename="job", max_parallel=1, max_upload=max_upload,
            fixed_levels=1,
        )
        self._lock = threading.RLock()
        self._configured = set(pods) | {DEFAULT_VOLUME}
        self._made_here: Set[str] = set()  # volumes registered by mkdir at the top level, not yet on the server
        self._listed: Set[str] = set()
        self._listed_at: Optional[float] = None
        self._listings: Dict[str, VolumeListing] = {}
        self._started = time.time()

    # -- the tree ---------------------------------------------------------------------------------------
    def volumes(self) -> List[str]:
        with self._lock:
            if self._listed_at is None or time.monotonic() - self._listed_at >= self.volumes_ttl:
                names = self.client.list_volumes() or []
                if not isinstance(names, list):
                    raise errors.ProtocolError("the server's volume list is not a list", "/")
                self._listed = {name for name in map(self._volume_name, names) if name is not None}
                self._listed_at = time.monotonic()
            return sorted(self._configured | self._listed)

    @staticmethod
    def _volume_name(item) -> Optional[str]:
        """A pod name from a pvc/list item (a string, or a dict naming it); None for anything else."""
        if isinstance(item, dict):
            keys = ("pod_name", "pvc_name", "name", "pvc")
            item = next((item[key] for key in keys if isinstance(item.get(key), str)), None)
        return item if isinstance(item, str) and is_pod_name(item) else None

    def _is_volume(self, name: str) -> bool:
        if name in self._configured:
            return True
        return is_pod_name(name) and name in self.volumes()  # no request for names that cannot be pods

    def _locate(self, path: str) -> Tuple[Optional[str], str]:
        """``(volume, path inside it)`` of a tree path; ``(None, '')`` for the root.  Unknown volume: NotFound."""
        parts = normalize(path).strip("/").split("/")
        if parts == [""]:
            return None, ""
        if not self._is_volume(parts[0]):
            raise errors.NotFound("no such volume (only configured or listed pod names are used)", "/" + parts[0])
        return parts[0], "/".join(parts[1:])

    def _listing(self, volume: str, fresh: bool = False) -> VolumeListing:
        with self._lock:
            if volume in self._made_here:  # nothing on the server yet, and asking would create the volume
                return self._listings.setdefault(volume, VolumeListing([], time.monotonic()))
            cached = self._listings.get(volume)
            if cached is None or fresh or time.monotonic() - cached.fetched_at >= self.listing_ttl:
                cached = VolumeListing(self.client.list_files(volume), time.monotonic(), f"/{volume}")
                self._listings[volume] = cached
            return cached

    def _lookup(self, volume: str, relative: str, listing: Optional[VolumeListing] = None) -> Optional[Entry]:
        """The entry at ``relative`` from the given or cached listing."""
        with self._lock:
            return (listing or self._listing(volume)).entries.get(relative)

    def _children(self, volume: str, relative: str, listing: Optional[VolumeListing] = None) -> Dict[str, Entry]:
        with self._lock:
            return dict((listing or self._listing(volume)).children.get(relative, {}))

    def _volume_entry(self, name: str) -> Entry:
        return Entry(name, DIRECTORY, 0, self._started, DIR_MODE)

    # -- metadata ---------------------------------------------------------------------------------------
    def list(self, path: str) -> List[Entry]:
        volume, relative = self._locate(path)
        if volume is None:
            return [self._volume_entry(name) for name in self.volumes()]
        with self._lock:
            listing = self._listing(volume)  # one listing answers both questions
            entry = self._lookup(volume, relative, listing)
            if entry is None:
                raise errors.NotFound("no such directory", path)
            if not entry.is_dir:
                raise errors.NotADirectory("not a directory", path)
            return sorted(self._children(volume, relative, listing).values(), key=lambda e: e.name)

    def stat(self, path: str) -> Entry:
        volume, relative = self._locate(path)
        if volume is None:
            return Entry("", DIRECTORY, 0, self._started, DIR_MODE)
        if not relative:
            return self._volume_entry(volume)
        entry = self._lookup(volume, relative)
        if entry is None:
            raise errors.NotFound("no such file or directory", path)
        return entry

    def _file(self, path: str) -> Tuple[str, str, Entry]:
        volume, relative = self._locate(path)
        entry = self.stat(path)
        if entry.is_dir or volume is None:  # the root is a directory too
            raise errors.IsADirectory("is a directory", path)
        return volume, relative, entry

    # -- data -------------------------------------------------------------------------------------------
    def read_whole(self, path: str, sink: BinaryIO) -> None:
        volume, relative, entry = self._file(path)
        try:
            received = self.client.download(volume, relative, sink)
        except errors.NotFound:
            self._forget_listing(volume)
            raise
        if received != entry.size:  # changed since the listing (a pod wrote it): look again next time
            self._forget_listing(volume)

    def write_whole(self, path: str, source: BinaryIO, size: int) -> None:
        volume, relative = self._writable(path, size)
        parent, name = posixpath.split(relative)
        self._require_directory(volume, parent, posixpath.dirname(path))
        existing = self._lookup(volume, relative)
        if existing is not None and existing.is_dir:
            raise errors.IsADirectory("is a directory", path)
        self.client.upload(volume, parent, [(name, seekable_copy(source), size)])
        self._written(volume, relative, size)

    def _batches(self, files):
        """Groups of at most ``max_files`` files and ``max_upload`` bytes, in the given order."""
        batch, total = [], 0
        for item in files:
            if batch and (len(batch) == self.max_files or total + item[2] > self.max_upload):
                yield batch
                batch, total = [], 0
            batch.append(item)
            total += item[2]
        if batch:
            yield batch

    def _check_upload(self, directory: str, name: str, size: int):
        where = posixpath.join(directory, name)
        _refuse_unstorable(name, where)
        if size > self.max_upload:
            raise errors.TooLarge(f"{size} bytes exceed the EM API's {self.max_upload} bytes per upload", where)

    def _writable(self, path: str, size: int) -> Tuple[str, str]:
        """``(volume, relative)`` of a file we may upload: inside a volume, storable name, within the limit."""
        volume, relative = self._locate_for_create(path)
        if not relative:
            raise errors.IsADirectory("a volume is a directory", path)
        self._check_upload(posixpath.dirname(normalize(path)), posixpath.basename(relative), size)
        return volume, relative

    def _locate_for_create(self, path: str) -> Tuple[str, str]:
        parts = normalize(path).strip("/").split("/")
        if len(parts) == 1 and not self._is_volume(parts[0]):
            raise errors.PermissionDenied("the top level holds volumes only; create files inside a volume", path)
        volume, relative = self._locate(path)
        if volume is None:
            raise errors.PermissionDenied("the top level holds volumes only", path)
        return volume, relative

    def _require_directory(self, volume: str, relative: str, where: str):
        if not relative:
            return
        directory = self._lookup(volume, relative)
        if directory is None:
            raise errors.NotFound("no such directory", where)
        if not directory.is_dir:
            raise errors.NotADirectory("not a directory", where)

    def _written(self, volume: str, relative: str, size: int):
        """Patch the cached listing with a file we uploaded; its directories now exist on the server."""
        now = time.time()
        self._patch(volume, relative, Entry(posixpath.basename(relative), FILE, size, now, 0o644,
                                            token=f"{size}:written:{now!r}"))

    def _patch(self, volume: str, relative: str, entry: Entry):
        """Record what we put on the server in the cached listing; the volume exists there now."""
        with self._lock:
            self._made_here.discard(volume)
            listing = self._listings.get(volume)
            if listing is not None:
                listing.put(relative, entry)

    def _place_marker(self, volume: str, relative: str):
        """Make directory ``relative`` on the server: an empty ``MARKER`` file in it (listings leave it out)."""
        self.client.upload(volume, relative, [(MARKER, io.BytesIO(), 0)])
        self._patch(volume, relative, Entry(posixpath.basename(relative), DIRECTORY, 0, time.time(), DIR_MODE))

    def _forget_listing(self, volume: str):
        with self._lock:
            self._listings.pop(volume, None)

    # -- namespace --------------------------------------------------------------------------------------
    def check_name(self, path: str) -> None:
        _refuse_unstorable(posixpath.basename(normalize(path)), path)

    def mkdir(self, path: str) -> None:
        parts = normalize(path).strip("/").split("/")
        if len(parts) == 1 and parts[0]:
            return self._make_volume(parts[0], path)
        volume, relative = self._locate(path)
        if volume is None or not relative or self._lookup(volume, relative) is not None:
            raise errors.AlreadyExists("exists", path)
        self._require_directory(volume, posixpath.dirname(relative), posixpath.dirname(path))
        self._place_marker(volume, relative)

    def _make_volume(self, name: str, path: str):
        """A new top-level directory registers a pod name; the server creates the volume with its first file."""
        if self._is_volume(name):
            raise errors.AlreadyExists("volume exists", path)
        if not is_pod_name(name):
            raise errors.InvalidPath("volume names are pod names: lowercase letters, digits and '-', at most 63", path)
        with self._lock:
            self._configured.add(name)
            self._made_here.add(name)

    def remove(self, path: str) -> None:
        volume, relative, _ = self._file(path)
        try:
            self.client.delete(volume, relative)
        except errors.NotFound:
            self._dropped(volume, relative)
            raise
        self._dropped(volume, relative)

    def _dropped(self, volume: str, relative: str):
        with self._lock:
            listing = self._listings.get(volume)
            if listing is not None:
                listing.drop(relative)

    def rmdir(self, path: str) -> None:
        volume, relative = self._locate(path)
        if volume is None:
            raise errors.PermissionDenied("the root of the tree cannot be removed", path)
        if not relative:
            return self._remove_volume(volume, path)
        listing = self._listing(volume, fresh=True)  # the server deletes recursively: decide on fresh facts
        entry = self._lookup(volume, relative, listing)
        if entry is None:
            raise errors.NotFound("no such directory", path)
        if not entry.is_dir:
            raise errors.NotADirectory("not a directory", path)
        if self._children(volume, relative, listing):
            raise errors.DirectoryNotEmpty("directory not empty", path)
        self.client.delete(volume, relative)
        self._dropped(volume, relative)

    def _remove_volume(self, volume: str, path: str):
        if self._children(volume, ""):
            raise errors.DirectoryNotEmpty("volume not empty", path)
        with self._lock:
            if volume not in self._made_here:
                raise errors.PermissionDenied("volumes cannot be deleted through the file system", path)
            self._made_here.discard(volume)
            self._configured.discard(volume)
            self._listings.pop(volume, None)

    def rename(self, src: str, dst: str) -> None:
        """Copy then delete: the API has no move.  Directories move file by file, in batched uploads."""
        src_volume, src_rel = self._locate(src)
        dst_volume, dst_rel = self._locate_for_create(dst)
        if src_volume is None or not src_rel or not dst_rel:
            raise errors.NotSupported("volumes cannot be renamed", src if not src_rel else dst)
        if (src_volume, src_rel) == (dst_volume, dst_rel):
            return
        entry = self.stat(src)
        self._require_directory(dst_volume, posixpath.dirname(dst_rel), posixpath.dirname(dst))
        target = self._lookup(dst_volume, dst_rel)
        if entry.is_dir:
            self._check_directory_target(src_volume, src_rel, dst_volume, dst_rel, target, dst)
            self._move_directory(src_volume, src_rel, dst_volume, dst_rel)
        else:
            if target is not None and target.is_dir:
                raise errors.IsADirectory("cannot replace a directory with a file", dst)
            self._check_upload(posixpath.dirname(dst), posixpath.basename(dst_rel), entry.size)
            self._copy_files(src_volume, [(src_rel, entry)], dst_volume, lambda rel: dst_rel)
            self.remove(src)

    def _check_directory_target(self, src_volume, src_rel, dst_volume, dst_rel, target, dst):
        if target is not None and not target.is_dir:
            raise errors.NotADirectory("cannot replace a file with a directory", dst)
        if target is not None and self._children(dst_volume, dst_rel):
            raise errors.DirectoryNotEmpty("directory not empty", dst)
        if src_volume == dst_volume and dst_rel.startswith(src_rel + "/"):
            raise errors.InvalidPath("cannot move a directory into itself", dst)

    def _move_directory(self, src_volume: str, src_rel: str, dst_volume: str, dst_rel: str):
        def moved(relative: str) -> str:
            return dst_rel + relative[len(src_rel):]

        with self._lock:
            listing = self._listing(src_volume, fresh=True)
            files = [(path, listing.entries[path]) for path in listing.files_below(src_rel)]
            dirs = listing.dirs_below(src_rel)
        for path, entry in files:
            self._check_upload(posixpath.dirname(moved(path)), entry.name, entry.size)
        self._copy_files(src_volume, files, dst_volume, moved)
        for directory in [dst_rel] + [moved(d) for d in dirs]:  # the copies made the others
            if self._lookup(dst_volume, directory) is None:
                self._place_marker(dst_volume, directory)
        self.client.delete(src_volume, src_rel)
        self._dropped(src_volume, src_rel)

    def _copy_files(self, src_volume: str, files: List[Tuple[str, Entry]], dst_volume: str, moved):
        """Download ``files`` to a local spool, then upload them, one batched call per target directory."""
        by_directory: Dict[str, List[Tuple[str, str, int]]] = {}
        with tempfile.TemporaryDirectory(prefix="hpcfs-em-move-") as spool:
            for index, (path, _entry) in enumerate(files):
                local = os.path.join(spool, str(index))
                with open(local, "wb") as sink:
                    size = self.client.download(src_volume, path, sink)
                target = moved(path)
                by_directory.setdefault(posixpath.dirname(target), []).append((posixpath.basename(target), local, size))
            for directory, items in by_directory.items():
                for batch in self._batches(items):
                    handles = [open(local, "rb") for _, local, _ in batch]
                    try:
                        self.client.upload(dst_volume, directory,
                                           [(name, handle, size) for (name, _, size), handle in zip(batch, handles)])
                    finally:
                        for handle in handles:
                            handle.close()
                    for name, _, size in batch:
                        self._written(dst_volume, posixpath.join(directory, name), size)

    # -- lifecycle --------------------------------------------------------------------------------------
    def describe(self) -> dict:
        return {
            "protocol": "DPhi Space EM API",
            "server": self.client.base_url,
            "user": self.client.username,
            "volumes": self.volumes(),
            "volume_list_endpoint": self.client.has_volume_list,
            "listing_ttl": self.listing_ttl,
            "max_upload": self.max_upload,
            "max_files_per_upload": self.max_files,
        }

    def close(self) -> None:
        self.client.close()


# -- URLs -----------------------------------------------------------------------------------------------
def _pod_names(settings: EMOptions, path: str) -> List[str]:
    listed = settings.pods
    names = list(listed) if isinstance(listed, (list, tuple, set)) else str(listed).split(",")
    first = path.strip("/").split("/")[0]
    names = [name.strip() for name in names + [first] if name.strip()]
    for name in names:
        if name != DEFAULT_VOLUME and not is_pod_name(name):
            raise errors.UsageError(
                f"'{name}' is not a pod name (lowercase letters, digits and '-'), nor {DEFAULT_VOLUME}")
    return names


def _scheme(settings: EMOptions, host: str) -> str:
    """https unless asked otherwise (``tls`` wins over ``scheme``); loopback alone defaults to http."""
    asked = settings.scheme if settings.tls is None else ("https" if settings.tls else "http")
    return net.http_scheme(host, asked, log, "EM API at %s over plain http, as asked: the password and data "
                           "cross the network unencrypted")


def backend_from_url(url: ParsedURL, settings: EMOptions):
    """``em://USER[:PASSWORD]@HOST[:PORT]/[POD/path]`` -> ``(EMBackend, root)``.

    https, except to a loopback host (127.0.0.0/8, ::1, localhost), where http is the default; plain http
    to any other host only with ``scheme=http`` or ``tls=0``, and then with a warning (the password would
    cross the network in clear).  ``verify=0`` or a CA file for self-signed servers.  The
    user and password are options (``settings``: an explicit option, the URL, ``EM_USERNAME``/``EM_PASSWORD``
    or a profile).  Extra pod names: ``pods=a,b`` or ``EM_PODS``.  Tuning: ``listing_ttl``,
    ``volumes_ttl``, ``timeout``, ``upload_timeout``, ``busy_timeout`` (total wait on 423), ``busy_backoff``
    (first pause), ``max_upload``, ``max_files``.
    """
    if not url.host:
        raise errors.UsageError("em:// URL needs a host: em://USER@HOST:PORT/")
    scheme = _scheme(settings, url.host)
    username = settings.user
    if not username:
        raise errors.UsageError("no EM API user: put it in the URL (em://USER@HOST/) or set EM_USERNAME")
    password = settings.password
    if not password:
        raise errors.UsageError(f"no password for EM API user {username}: set EM_PASSWORD")
    root = normalize(url.path)
    client = EMClient(
        net.base_url(scheme, url.host, url.port),
        username,
        password,
        verify=net.parse_verify(settings.verify, settings.ca_file),
        timeout=settings.timeout,
        upload_timeout=settings.upload_timeout,
        busy_timeout=settings.busy_timeout,
        first_backoff=settings.busy_backoff,
    )
    backend = EMBackend(
        client,
        _pod_names(settings, root),
        listing_ttl=settings.listing_ttl,
        volumes_ttl=settings.volumes_ttl,
        max_upload=settings.max_upload,
        max_files=settings.max_files,
    )
    return backend, root
