"""EMBackend against the local EM API server over real sockets: tree, caching, writes, auth, faults.

Request counts come from the server's own log, so "one listing per volume" and "no unknown volume is
ever named" are measured where it matters: on the wire.
"""
import errno
import hashlib
import io
import os
import threading
import time

import pytest

from fixtures_em import PASSWORD, VOLUMES
from hpcfs import errors
from hpcfs.em.backend import MARKER
from hpcfs.urls import open_backend, parse

pytestmark = pytest.mark.timeout(30)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def disk(handle, volume, path) -> bytes:
    with open(os.path.join(handle.root, volume, path), "rb") as source:
        return source.read()


def write(backend, path, data: bytes):
    backend.write_whole(path, io.BytesIO(data), len(data))


def read(backend, path) -> bytes:
    sink = io.BytesIO()
    backend.read_whole(path, sink)
    return sink.getvalue()


def requests_naming_volumes(handle):
    return {detail for kind, detail in handle.log.entries if detail}


@pytest.fixture
def open_em(em_server):
    """``open_em(**options)`` -> backend on the whole tree of ``em_server``; closed afterwards."""
    backends = []

    def make(handle=em_server, path="/", **options):
        backend, root = open_backend(handle.url(path), **options)
        backends.append(backend)
        return backend

    yield make
    for backend in backends:
        backend.close()


# -- the tree -------------------------------------------------------------------------------------------
def test_root_lists_configured_listed_and_default_volumes(em_server, open_em):
    backend = open_em(pods="pod-c")
    assert [e.name for e in backend.list("/")] == ["_default", "pod-a", "pod-b", "pod-c"]
    assert all(e.is_dir for e in backend.list("/"))
    assert backend.stat("/pod-c").is_dir and backend.stat("/").name == ""
    write(backend, "/_default/top.txt", b"default volume")
    assert disk(em_server, "_default", "top.txt") == b"default volume"
    assert em_server.server.names_seen.keys() <= set(VOLUMES)  # the default volume is never named


def test_without_volume_endpoint_only_configured_volumes_show(make_em_server, open_em):
    handle = make_em_server(pvc_list=False)
    backend = open_em(handle, pods="pod-b")
    assert [e.name for e in backend.list("/")] == ["_default", "pod-b"]
    with pytest.raises(errors.NotFound):
        backend.stat("/pod-a")  # exists on the server, but nobody configured or listed it
    assert "pod-a" not in handle.server.names_seen


@pytest.mark.parametrize("probe", [".Trash-1000", "autorun.inf", ".hidden", "desktop", "pod-z", "Pod-A"])
def test_probes_at_the_root_are_answered_locally(em_server, open_em, probe):
    backend = open_em()
    backend.list("/")
    before = em_server.log.total()
    for operation in (backend.stat, backend.list, backend.rmdir, backend.remove):
        with pytest.raises(errors.NotFound):
            operation(f"/{probe}")
    with pytest.raises(errors.NotFound):
        backend.stat(f"/{probe}/sub/file")
    with pytest.raises(errors.PermissionDenied):
        write(backend, f"/{probe}", b"x")
    assert em_server.log.total() == before
    assert requests_naming_volumes(em_server) <= {"_default", *VOLUMES}
    assert not os.path.exists(os.path.join(em_server.root, probe))


def test_one_listing_serves_a_whole_recursive_walk(em_server, open_em):
    for path in ("a.txt", "d1/b.txt", "d1/d2/c.txt", "d1/d2/d3/e.txt", "d4/f.txt"):
        em_server.server.write_out_of_band("pod-a", path, path.encode())
    backend = open_em()
    seen = []

    def walk(path):
        for entry in backend.list(path):
            child = f"{path.rstrip('/')}/{entry.name}"
            seen.append((child, backend.stat(child).size))
            if entry.is_dir:
                walk(child)

    walk("/pod-a")
    assert ("/pod-a/d1/d2/d3/e.txt", len("d1/d2/d3/e.txt")) in seen and len(seen) == 9
    assert em_server.log.counts["files/list"] == 1
    walk("/pod-b")
    assert em_server.log.counts["files/list"] == 2  # one per volume


def test_entries_carry_size_minute_time_and_a_change_token(em_server, open_em):
    em_server.server.write_out_of_band("pod-a", "f.bin", b"12345")
    backend = open_em(listing_ttl=0.2)
    first = backend.stat("/pod-a/f.bin")
    assert first.size == 5 and first.mtime % 60 == 0 and abs(first.mtime - time.time()) < 120
    time.sleep(0.25)
    assert backend.stat("/pod-a/f.bin").token == first.token  # unchanged content, same token
    em_server.server.write_out_of_band("pod-a", "f.bin", b"54321")  # same size, same minute
    time.sleep(0.25)
    assert backend.stat("/pod-a/f.bin").token != first.token


def test_non_directories_and_missing_paths(em_server, open_em):
    em_server.server.write_out_of_band("pod-a", "f", b"x")
    backend = open_em()
    with pytest.raises(errors.NotADirectory):
        backend.list("/pod-a/f")
    with pytest.raises(errors.NotFound):
        backend.list("/pod-a/nothing")
    with pytest.raises(errors.IsADirectory):
        read(backend, "/pod-a")


# -- data -----------------------------------------------------------------------------------------------
def test_read_downloads_the_whole_file(em_server, open_em):
    payload = os.urandom(3 * 1024 * 1024 + 17)
    em_server.server.write_out_of_band("pod-b", "deep/big.bin", payload)
    backend = open_em()
    assert sha256(read(backend, "/pod-b/deep/big.bin")) == sha256(payload)
    assert em_server.log.counts["files/downlink"] == 1


def test_write_small_file_is_visible_without_another_listing(em_server, open_em):
    backend = open_em()
    backend.list("/pod-a")
    write(backend, "/pod-a/new.txt", b"fresh")
    assert backend.stat("/pod-a/new.txt").size == 5
    assert [e.name for e in backend.list("/pod-a")] == ["new.txt"]
    assert em_server.log.counts["files/list"] == 1 and em_server.log.counts["files/uplink"] == 1
    assert disk(em_server, "pod-a", "new.txt") == b"fresh"
    write(backend, "/pod-a/new.txt", b"")  # replace with an empty file
    assert disk(em_server, "pod-a", "new.txt") == b"" and backend.stat("/pod-a/new.txt").size == 0


def test_names_that_need_quoting_survive_the_upload(em_server, open_em):
    backend = open_em()
    names = ['quo"te.txt', "amp&amp;.txt", "sp ace ü.txt", "<tag>.txt"]
    for name in names:
        write(backend, f"/pod-a/{name}", name.encode())
    assert sorted(os.listdir(os.path.join(em_server.root, "pod-a"))) == sorted(names)
    with pytest.raises(errors.InvalidPath):
        write(backend, "/pod-a/back\\slash", b"x")  # Django would cut the name at the backslash


def test_files_above_the_upload_limit_are_refused_with_efbig(make_em_server, open_em):
    handle = make_em_server(max_upload=1000)
    backend = open_em(handle, max_upload=1000)
    with pytest.raises(errors.TooLarge) as refused:
        backend.write_whole("/pod-a/big", io.BytesIO(b"x" * 1001), 1001)
    assert refused.value.errno == errno.EFBIG and handle.log.counts["files/uplink"] == 0
    loose = open_em(handle)  # believes in 2 GB: the server's own refusal maps to EFBIG too
    with pytest.raises(errors.TooLarge):
        loose.write_whole("/pod-a/big", io.BytesIO(b"x" * 1001), 1001)
    assert not os.path.exists(os.path.join(handle.root, "pod-a", "big"))


def test_unseekable_sources_are_spooled(em_server, open_em):
    backend = open_em()
    reader, writer = os.pipe()
    with os.fdopen(writer, "wb") as pipe_in:
        pipe_in.write(b"through a pipe")
    with os.fdopen(reader, "rb", buffering=0) as pipe_out:
        backend.write_whole("/pod-a/piped", pipe_out, 14)
    assert disk(em_server, "pod-a", "piped") == b"through a pipe"


# -- namespace ------------------------------------------------------------------------------------------
def test_mkdir_uploads_a_hidden_marker_so_the_directory_is_on_the_server(em_server, open_em):
    backend = open_em()
    backend.mkdir("/pod-a/empty")
    backend.mkdir("/pod-a/empty/inner")
    assert [e.name for e in backend.list("/pod-a")] == ["empty"]
    assert backend.stat("/pod-a/empty/inner").is_dir and backend.list("/pod-a/empty/inner") == []
    assert disk(em_server, "pod-a", f"empty/inner/{MARKER}") == b""
    assert open_em().list("/pod-a/empty/inner") == []  # another process: the directory, not its marker
    with pytest.raises(errors.AlreadyExists):
        backend.mkdir("/pod-a/empty")
    with pytest.raises(errors.NotFound):
        backend.mkdir("/pod-a/missing/child")
    with pytest.raises(errors.InvalidPath):
        write(backend, f"/pod-a/empty/{MARKER}", b"reserved")
    write(backend, "/pod-a/empty/inner/f.txt", b"landed")
    assert disk(em_server, "pod-a", "empty/inner/f.txt") == b"landed"
    assert em_server.log.counts["files/uplink"] == 3
    backend.remove("/pod-a/empty/inner/f.txt")
    backend.rmdir("/pod-a/empty/inner")  # empty but for its marker
    assert not os.path.exists(os.path.join(em_server.root, "pod-a", "empty", "inner"))


def test_mkdir_at_the_top_registers_a_volume_without_asking_the_server(em_server, open_em):
    backend = open_em()
    backend.mkdir("/pod-new")
    assert "pod-new" in [e.name for e in backend.list("/")] and backend.list("/pod-new") == []
    assert "pod-new" not in em_server.server.names_seen
    with pytest.raises(errors.InvalidPath):
        backend.mkdir("/Not_A_Pod")
    backend.rmdir("/pod-new")
    assert "pod-new" not in [e.name for e in backend.list("/")]
    backend.mkdir("/pod-new")
    write(backend, "/pod-new/first.txt", b"creates the volume")
    assert disk(em_server, "pod-new", "first.txt") == b"creates the volume"
    with pytest.raises(errors.PermissionDenied):
        backend.rmdir("/pod-b")  # real volumes are not deleted through the file system


def test_rmdir_checks_emptiness_because_the_server_deletes_recursively(em_server, open_em):
    em_server.server.write_out_of_band("pod-a", "full/keep.txt", b"precious")
    os.makedirs(os.path.join(em_server.root, "pod-a", "hollow"))
    backend = open_em()
    with pytest.raises(errors.DirectoryNotEmpty):
        backend.rmdir("/pod-a/full")
    assert disk(em_server, "pod-a", "full/keep.txt") == b"precious"
    backend.rmdir("/pod-a/hollow")
    assert not os.path.exists(os.path.join(em_server.root, "pod-a", "hollow"))
    with pytest.raises(errors.NotADirectory):
        backend.rmdir("/pod-a/full/keep.txt")
    backend.remove("/pod-a/full/keep.txt")
    assert [e.name for e in backend.list("/pod-a/full")] == []


def test_rmdir_sees_files_a_pod_just_wrote(em_server, open_em):
    os.makedirs(os.path.join(em_server.root, "pod-a", "out"))
    backend = open_em()
    assert backend.list("/pod-a/out") == []
    em_server.server.write_out_of_band("pod-a", "out/result.dat", b"written by a pod")
    with pytest.raises(errors.DirectoryNotEmpty):
        backend.rmdir("/pod-a/out")  # the cached listing says empty; the fresh one does not
    assert disk(em_server, "pod-a", "out/result.dat") == b"written by a pod"


def test_rename_file_copies_then_deletes(em_server, open_em):
    payload = os.urandom(70_000)
    em_server.server.write_out_of_band("pod-a", "src.bin", payload)
    em_server.server.write_out_of_band("pod-b", "dst.bin", b"old")
    backend = open_em()
    backend.rename("/pod-a/src.bin", "/pod-b/dst.bin")  # across volumes, replacing a file
    assert sha256(disk(em_server, "pod-b", "dst.bin")) == sha256(payload)
    assert not os.path.exists(os.path.join(em_server.root, "pod-a", "src.bin"))
    assert backend.stat("/pod-b/dst.bin").size == len(payload)
    with pytest.raises(errors.NotFound):
        backend.stat("/pod-a/src.bin")
    assert backend.capabilities.rename == "job"


def test_rename_directory_moves_every_file_and_empty_directory(em_server, open_em):
    tree = {"d/a.txt": b"a", "d/sub/b.txt": b"b", "d/sub/deeper/c.txt": os.urandom(5000)}
    for path, data in tree.items():
        em_server.server.write_out_of_band("pod-a", path, data)
    backend = open_em()
    backend.mkdir("/pod-a/d/only-here")
    backend.rename("/pod-a/d", "/pod-a/e")
    for path, data in tree.items():
        assert sha256(disk(em_server, "pod-a", "e" + path[1:])) == sha256(data)
    assert not os.path.exists(os.path.join(em_server.root, "pod-a", "d"))
    assert sorted(e.name for e in backend.list("/pod-a/e")) == ["a.txt", "only-here", "sub"]
    assert disk(em_server, "pod-a", f"e/only-here/{MARKER}") == b""  # still there for the next process
    with pytest.raises(errors.NotFound):
        backend.stat("/pod-a/d")
    with pytest.raises(errors.InvalidPath):
        backend.rename("/pod-a/e", "/pod-a/e/sub/inside")
    with pytest.raises(errors.NotSupported):
        backend.rename("/pod-a", "/pod-b/x")


# -- freshness ------------------------------------------------------------------------------------------
def test_out_of_band_changes_show_after_the_listing_ttl(em_server, open_em):
    backend = open_em(listing_ttl=0.4)
    assert backend.list("/pod-a") == []
    em_server.server.write_out_of_band("pod-a", "from-pod.txt", b"pod output")
    assert backend.list("/pod-a") == []  # still the cached listing
    time.sleep(0.45)
    assert [e.name for e in backend.list("/pod-a")] == ["from-pod.txt"]
    assert read(backend, "/pod-a/from-pod.txt") == b"pod output"


def test_a_file_changed_since_the_listing_invalidates_it(em_server, open_em):
    em_server.server.write_out_of_band("pod-a", "grows.log", b"one")
    backend = open_em()
    assert backend.stat("/pod-a/grows.log").size == 3
    em_server.server.write_out_of_band("pod-a", "grows.log", b"one two")
    assert read(backend, "/pod-a/grows.log") == b"one two"
    assert backend.stat("/pod-a/grows.log").size == 7  # looked again after the surprise


# -- the account: serialization, 423, tokens ------------------------------------------------------------
def test_busy_answers_are_retried(em_server, open_em):
    backend = open_em(busy_backoff=0.05)
    em_server.knobs.busy_responses = 3
    assert backend.list("/pod-a") == []
    assert em_server.server.statuses[423] == 3


def test_busy_for_too_long_gives_eagain(em_server, open_em):
    backend = open_em(busy_timeout=0.6, busy_backoff=0.05)
    em_server.knobs.busy_responses = 100
    with pytest.raises(errors.Busy) as busy:
        backend.list("/pod-a")
    assert busy.value.errno == errno.EAGAIN


def test_requests_of_one_account_never_overlap(em_server, open_em):
    for name in ("x", "y", "z"):
        em_server.server.write_out_of_band("pod-a", name, name.encode() * 1000)
    em_server.knobs.extra["busy_time"] = 0.02
    backend = open_em(listing_ttl=0)
    failures = []

    def work(name):
        try:
            for _ in range(3):
                assert read(backend, f"/pod-a/{name}") == name.encode() * 1000
        except Exception as exc:  # collected: assertion errors in threads are otherwise lost
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(name,)) for name in ("x", "y", "z")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not any(thread.is_alive() for thread in threads), "a request hung"
    assert not failures and em_server.server.statuses[423] == 0
    assert em_server.log.counts["files/downlink"] == 9


def test_another_client_of_the_account_makes_us_wait(em_server, open_em):
    backend = open_em(busy_backoff=0.05)
    backend.list("/")  # logged in
    em_server.knobs.extra["upload_delay"] = 0.6
    other, _ = open_backend(em_server.url())
    uploading = threading.Thread(target=write, args=(other, "/pod-b/slow.bin", b"slow"))
    uploading.start()
    time.sleep(0.2)
    assert backend.list("/pod-a") == []  # got 423 while the other upload ran, then succeeded
    uploading.join(10)
    assert not uploading.is_alive(), "the other upload hung"
    other.close()
    assert em_server.server.statuses[423] >= 1 and disk(em_server, "pod-b", "slow.bin") == b"slow"


def test_access_token_is_refreshed_before_it_expires(make_em_server, open_em):
    handle = make_em_server(access_lifetime=0.8)
    backend = open_em(handle, listing_ttl=0)
    for _ in range(4):
        backend.list("/pod-a")
        time.sleep(0.3)
    assert handle.log.counts["auth"] == 1 and handle.log.counts["auth/refresh"] >= 1
    assert handle.server.statuses[401] == 0


def test_failed_refresh_falls_back_to_a_new_login(make_em_server, open_em):
    handle = make_em_server(access_lifetime=0.4)
    backend = open_em(handle, listing_ttl=0)
    backend.list("/pod-a")
    handle.server.revoke_tokens()  # the refresh token dies too
    time.sleep(0.45)
    backend.list("/pod-a")
    assert handle.log.counts["auth/refresh"] == 1 and handle.log.counts["auth"] == 2


def test_a_401_is_answered_by_one_login_and_one_replay(em_server, open_em):
    backend = open_em()
    backend.list("/pod-a")  # cached: the upload is the first request after the revocation
    em_server.server.revoke_tokens()
    write(backend, "/pod-a/after-revoke.txt", b"replayed upload")
    assert em_server.log.counts["files/uplink"] == 2 and em_server.log.counts["auth"] == 2
    assert disk(em_server, "pod-a", "after-revoke.txt") == b"replayed upload"


def test_refused_login_is_eacces_without_the_password(em_server, open_em):
    refused_backend, _ = open_backend(em_server.url().replace("s3cret", "wrong"))
    with pytest.raises(errors.AuthenticationFailed) as refused:
        refused_backend.list("/pod-a")
    assert refused.value.errno == errno.EACCES and "wrong" not in str(refused.value)
    backend = open_em()
    assert "s3cret" not in repr(backend.client) + repr(backend) + str(backend.describe())


# -- faults and drift -----------------------------------------------------------------------------------
def test_html_error_pages_become_readable_errors(em_server, open_em):
    backend = open_em()
    em_server.knobs.extra["fail_responses"] = 1
    with pytest.raises(errors.HpcfsError) as failed:
        backend.list("/pod-a")
    assert failed.value.errno == errno.EIO and "Server Error (500)" in str(failed.value)
    assert backend.list("/pod-a") == []


def test_a_broken_download_is_an_error_not_a_short_file(em_server, open_em):
    em_server.server.write_out_of_band("pod-a", "big", os.urandom(3 << 20))
    backend = open_em()
    em_server.knobs.drop_after_bytes = 1 << 20
    with pytest.raises(errors.ProtocolError):
        read(backend, "/pod-a/big")


def test_time_outs_apply_to_every_request(em_server, open_em):
    backend = open_em(timeout=0.3)
    backend.list("/")
    em_server.knobs.latency = 1.0
    with pytest.raises(errors.TimedOut):
        backend.list("/pod-a")


def test_v2_servers_are_spoken_to_with_post_and_pvc_name(make_em_server, open_em):
    handle = make_em_server(api="v2")
    handle.server.write_out_of_band("pod-b", "v2.txt", b"drift")
    backend = open_em(handle, listing_ttl=0)
    assert [e.name for e in backend.list("/pod-b")] == ["v2.txt"]
    assert read(backend, "/pod-b/v2.txt") == b"drift"
    write(backend, "/pod-b/up.txt", b"up")
    assert disk(handle, "pod-b", "up.txt") == b"up"
    handle.log.reset()
    backend.list("/pod-b")
    assert handle.log.counts["files/list"] == 1  # the 405 fallback is remembered
    assert handle.server.names_seen.keys() <= set(VOLUMES)


# -- URLs -----------------------------------------------------------------------------------------------
def test_url_forms(em_server, monkeypatch):
    monkeypatch.delenv("EM_PODS", raising=False)
    backend, root = open_backend(em_server.url("/pod-a/sub/dir"))
    assert root == "/pod-a/sub/dir" and backend.client.base_url == f"http://127.0.0.1:{em_server.server.port}"
    backend.close()
    monkeypatch.setenv("EM_PASSWORD", PASSWORD)
    monkeypatch.setenv("EM_PODS", "pod-x,pod-y")
    backend, root = open_backend(em_server.plain_url("/", pods="pod-z", tls="1", listing_ttl="7"))
    assert root == "/" and backend.client.base_url.startswith("https://") and backend.listing_ttl == 7
    assert backend._configured == {"pod-z", "_default"}  # the option beats EM_PODS, as options beat variables
    backend.close()
    backend, _ = open_backend(em_server.plain_url("/", tls="1"))
    assert {"pod-x", "pod-y"} <= backend._configured
    backend.close()


@pytest.mark.parametrize("url, message", [
    ("em://127.0.0.1:1/", "EM_USERNAME"),
    ("em://bob@127.0.0.1:1/", "EM_PASSWORD"),
    ("em://bob:pw@127.0.0.1:1/Bad_Pod/x", "not a pod name"),
    ("em://bob:pw@127.0.0.1:1/?listing_ttl=soon", "listing_ttl"),
    ("em://bob:pw@127.0.0.1:1/?scheme=ftp", "http or https"),
])
def test_bad_urls_are_usage_errors(url, message, monkeypatch):
    for name in ("EM_USERNAME", "EM_PASSWORD", "EM_PODS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(errors.UsageError, match=message):
        open_backend(url)


def test_https_with_the_servers_certificate(make_em_server, open_em):
    handle = make_em_server(tls=True)
    backend = open_em(handle, tls="1", verify=handle.server.cert_file)
    write(backend, "/pod-a/secure.txt", b"over tls")
    assert read(backend, "/pod-a/secure.txt") == b"over tls"
    assert parse(handle.url()).scheme == "em"


# -- transport security -----------------------------------------------------------------------------------
def test_loopback_hosts_may_use_plain_http(em_server, caplog):
    """The local server speaks http on 127.0.0.1; by address or as ``localhost`` that needs no option."""
    for host in ("127.0.0.1", "localhost"):
        url = em_server.url("/pod-a").replace("@127.0.0.1:", f"@{host}:")
        backend, _ = open_backend(url)
        try:
            assert backend.client.base_url == f"http://{host}:{em_server.server.port}"
            em_server.server.write_out_of_band("pod-a", "seen.txt", b"over loopback")
            assert read(backend, "/pod-a/seen.txt") == b"over loopback"
        finally:
            backend.close()
    assert not [record for record in caplog.records if record.name == "hpcfs.em"]


@pytest.mark.parametrize("host", ["em.example.org", "10.1.2.3", "[2001:db8::1]"])
def test_other_hosts_default_to_https_and_http_must_be_asked_for(host, caplog):
    """The password must not cross a network in clear unless the user says so; nothing is sent here."""
    plain_host = host.strip("[]")
    backend, _ = open_backend(f"em://alice:pw@{host}:8443/pod-a")
    assert backend.client.base_url == f"https://{host}:8443"
    assert not caplog.records
    for asked in ({"scheme": "http"}, {"tls": "0"}):
        caplog.clear()
        backend, _ = open_backend(f"em://alice:pw@{host}:8443/pod-a", **asked)
        assert backend.client.base_url == f"http://{host}:8443"
        warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
        assert len(warnings) == 1 and plain_host in warnings[0] and "unencrypted" in warnings[0], warnings
