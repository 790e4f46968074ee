"""What FirecREST v2 runs over SSH for each ``ops`` endpoint, emulated on a local directory.

The real server wraps ``ls``, ``stat``, ``base64``, ``mkdir``... in ``timeout 5`` and turns the exit status
and stderr into HTTP errors by substring (github.com/eth-cscs/firecrest-v2, 2.5.x).  This module
reproduces the commands' output and their coreutils error messages, so the same mapping gives the same
status codes, and keeps the real server's defects: the output cap with its deadlock, the hang on an
empty upload, paths with ``'`` breaking the shell quoting, names octal-escaped by a C locale.
"""
import contextlib
import errno
import hashlib
import os
import re
import shlex
import shutil
import stat as stat_module
import time
from typing import List, Optional, Sequence, TypeVar

from ..common import OutsideRoot, check_link_target, confine, open_for_writing

SSH_WINDOW = 2 * 1024 * 1024  # output beyond the cap by more than this deadlocks the SSH channel
FILE_LINE = re.compile(
    r"^(?P<type>\S)(?P<permissions>\S+)\s+\d+\s+(?P<user>\S+)\s+(?P<group>\S+)\s+(?P<size>\d+)\s+"
    r"(?P<last_modified>[\dT:-]+)\s+(?P<filename>.+)$"
)
_C_ESCAPES = {7: "\\a", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r", 34: '\\"', 92: "\\\\"}


class ApiError(Exception):
    """An HTTP error in FirecREST's shape: ``{"errorType","message","causedBy","data","user"}``."""

    def __init__(self, status: int, message: str, error_type: str = "error", data: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.error_type, self.data = status, message, error_type, data


def timed_out() -> ApiError:
    """What the server's guard around a command answers when it fires."""
    return ApiError(408, "Command execution timeout limit exceeded.")


@contextlib.contextmanager
def shell_errors(prefix: str, outside_root: int = errno.ENOENT, exit_status: int = 1):
    """A failed file operation as the shell reports it: ``PREFIX: No such file or directory`` and the like.
    A path outside the served root looks like ``outside_root`` (missing, unless the command says otherwise)."""
    try:
        yield
    except OutsideRoot:
        raise command_error(exit_status, f"{prefix}: {os.strerror(outside_root)}") from None
    except OSError as exc:
        if exc.errno is None:
            raise
        raise command_error(exit_status, f"{prefix}: {os.strerror(exc.errno)}") from None


def command_error(exit_status: int, stderr: str) -> ApiError:
    """The HTTP error FirecREST derives from a failed remote command."""
    message = f"Remote process failed with exit status:{exit_status}"
    if stderr.strip():
        message += f" and error message:{stderr.strip()}"
    if exit_status == 124:
        return ApiError(408, message)
    if "No such file or directory" in stderr:
        return ApiError(404, message)
    if "Permission denied" in stderr or "Operation not permitted" in stderr:
        return ApiError(403, message)
    if "File exists" in stderr or "invalid user" in stderr:
        return ApiError(400, message)
    return ApiError(500, message)


def c_quote(name: bytes) -> str:
    """A name as ``ls --quoting-style=c`` prints it under a C locale (non-ASCII as octal escapes)."""
    out = []
    for byte in name:
        if byte in _C_ESCAPES:
            out.append(_C_ESCAPES[byte])
        elif byte < 32 or byte >= 127:
            out.append(f"\\{byte:03o}")
        else:
            out.append(chr(byte))
    return '"' + "".join(out) + '"'


def _owner(uid: int, numeric: bool) -> str:
    return _name(uid, numeric, "pwd", "getpwuid", "pw_name")


def _group(gid: int, numeric: bool) -> str:
    return _name(gid, numeric, "grp", "getgrgid", "gr_name")


def _name(number: int, numeric: bool, module: str, lookup: str, field: str) -> str:
    """A user or group name as ``ls -l`` shows it, or the number where asked or unknown."""
    if not numeric:
        try:
            return getattr(getattr(__import__(module), lookup)(number), field)
        except (KeyError, ImportError):
            pass
    return str(number)


def parse_ls(stdout: str) -> List[dict]:
    """FirecREST's reading of ``ls -l`` text: one ``File`` per line, names through ``shlex``; with ``-R``,
    entries of subdirectories prefixed with their path relative to the listed directory."""
    sections = re.split(r'"(.+)":\n', stdout)
    if len(sections) == 1:
        return _parse_ls_section(stdout, "")
    files, root_folder = [], None
    for index in range(1, len(sections), 2):
        folder = sections[index].rstrip("/") + "/"
        root_folder = root_folder or folder
        files += _parse_ls_section(sections[index + 1], folder[len(root_folder):])
    return files


def _parse_ls_section(text: str, prefix: str) -> List[dict]:
    files = []
    for line in text.splitlines():
        match = FILE_LINE.match(line)
        if not match:
            continue
        tokens = shlex.split(match.group("filename"))
        if len(tokens) not in (1, 3):
            continue
        files.append({
            "name": prefix + tokens[0],
            "type": match.group("type"),
            "linkTarget": tokens[2] if len(tokens) == 3 else None,
            "user": match.group("user"),
            "group": match.group("group"),
            "permissions": match.group("permissions"),
            "lastModified": match.group("last_modified"),
            "size": match.group("size"),
        })
    return files


class RemoteShell:
    """The login node's shell on ``root``: one method per command FirecREST runs.  ``limits()`` returns
    ``(max_ops_file_size, command_timeout)`` as currently configured."""

    def __init__(self, root: str, limits):
        self.root = root
        self.limits = limits

    # -- paths ----------------------------------------------------------------------------------------
    def local(self, path: str, follow: bool = False) -> str:
        """The local path of remote ``path``; the last component is not resolved unless ``follow``."""
        parent, name = os.path.split(path.rstrip("/") or "/")
        if follow or name in ("", ".", ".."):
            return confine(self.root, path)
        return os.path.join(confine(self.root, parent), name)

    def _stat(self, path: str, command_error_text: str, follow: bool = False, exit_status: int = 1):
        with shell_errors(command_error_text, outside_root=errno.EACCES, exit_status=exit_status):
            return os.stat(self.local(path, follow), follow_symlinks=follow)

    def deliver(self, stdout: bytes, on_deadlock: ApiError) -> bytes:
        """Apply the output cap: 413 just above it; far above it the channel deadlocks until the
        command timeout fires and the request fails with ``on_deadlock``."""
        cap, command_timeout = self.limits()
        if len(stdout) < cap:
            return stdout
        if len(stdout) >= cap + SSH_WINDOW:
            time.sleep(command_timeout)
            raise on_deadlock
        raise ApiError(413, "Command output exceeded buffer limit.")

    # -- ls -------------------------------------------------------------------------------------------
    def ls(self, path: str, hidden=False, numeric=False, recursive=False, dereference=False) -> List[dict]:
        follow = dereference or path.endswith("/")
        st = self._stat(path, f"ls: cannot access '{path}'", follow, exit_status=2)  # GNU ls: "serious trouble"
        if not stat_module.S_ISDIR(st.st_mode):
            text = self._ls_line(st, path.encode("utf-8", "surrogateescape"), self.local(path, follow), numeric)
        else:
            text = self._ls_directory(path, hidden, numeric, recursive, dereference, header=recursive)
        stdout = self.deliver(text.encode("utf-8", "surrogateescape"), timed_out())
        return parse_ls(stdout.decode("utf-8", "replace"))

    def _ls_directory(self, path, hidden, numeric, recursive, dereference, header) -> str:
        local = self.local(path, follow=True)
        try:
            names = sorted(os.listdir(os.fsencode(local)))
        except PermissionError:
            raise command_error(2, f"ls: cannot open directory '{path}': Permission denied") from None
        if not hidden:
            names = [name for name in names if not name.startswith(b".")]
        lines, subdirs = [], []
        for name in names:
            child = os.path.join(os.fsencode(local), name)
            child_path = path.rstrip("/") + "/" + os.fsdecode(name)
            try:
                st = os.stat(child, follow_symlinks=dereference)
            except OSError:
                raise command_error(2, f"ls: cannot access '{child_path}': No such file or directory") from None
            lines.append(self._ls_line(st, name, os.fsdecode(child), numeric))
            if recursive and stat_module.S_ISDIR(st.st_mode):
                subdirs.append(child_path)
        text = (c_quote(path.encode("utf-8", "surrogateescape")) + ":\n" if header else "")
        text += f"total {4 * len(lines)}\n" + "".join(lines)
        for subdir in subdirs:
            text += "\n" + self._ls_directory(subdir, hidden, numeric, recursive, dereference, header=True)
        return text

    def _ls_line(self, st, name: bytes, local: str, numeric: bool) -> str:
        mtime = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(st.st_mtime))
        line = (f"{stat_module.filemode(st.st_mode)} {st.st_nlink} {_owner(st.st_uid, numeric)} "
                f"{_group(st.st_gid, numeric)} {st.st_size} {mtime} {c_quote(name)}")
        if stat_module.S_ISLNK(st.st_mode):
            line += " -> " + c_quote(os.fsencode(self.readlink(local)))
        return line + "\n"

    def ls_one(self, path: str) -> dict:
        """``ls -l -d`` of one path, as mkdir, symlink and chmod return it."""
        st = self._stat(path, f"ls: cannot access '{path}'")
        line = self._ls_line(st, path.encode("utf-8", "surrogateescape"), self.local(path), False)
        return parse_ls(line)[0]

    # -- stat, checksum, file -------------------------------------------------------------------------
    def stat(self, path: str, dereference: bool = False) -> dict:
        st = self._stat(path, f"stat: cannot statx '{path}'", dereference)
        return {"mode": st.st_mode, "ino": st.st_ino, "dev": st.st_dev, "nlink": st.st_nlink, "uid": st.st_uid,
                "gid": st.st_gid, "size": st.st_size, "atime": int(st.st_atime), "ctime": int(st.st_ctime),
                "mtime": int(st.st_mtime)}

    def checksum(self, path: str) -> dict:
        return {"algorithm": "SHA256", "checksum": hashlib.sha256(self._read(path, "sha256sum")).hexdigest()}

    def file_type(self, path: str) -> str:
        try:
            st = os.stat(self.local(path), follow_symlinks=False)
        except OSError:
            return f"cannot open `{path}' (No such file or directory)"
        if stat_module.S_ISDIR(st.st_mode):
            return "directory"
        if stat_module.S_ISLNK(st.st_mode):
            return f"symbolic link to {self.readlink(self.local(path))}"
        data = self._read(path, "file")[:65536]
        if not data:
            return "empty"
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return "data"
        return "ASCII text" if text.isascii() else "Unicode text, UTF-8 text"

    # -- reading --------------------------------------------------------------------------------------
    def _read(self, path: str, command: str) -> bytes:
        try:
            with open(self.local(path, follow=True), "rb") as handle:
                return handle.read()
        except (FileNotFoundError, OutsideRoot):
            raise command_error(1, f"{command}: {path}: No such file or directory") from None
        except IsADirectoryError:  # sha256sum names the path, base64 and the rest do not
            detail = path if command == "sha256sum" else "read error"
            raise command_error(1, f"{command}: {detail}: Is a directory") from None
        except PermissionError:
            raise command_error(1, f"{command}: {path}: Permission denied") from None

    def download(self, path: str) -> bytes:
        """``base64 --wrap=0``: the encoded text must fit under the output cap."""
        data = self._read(path, "base64")
        encoded_length = 4 * ((len(data) + 2) // 3)
        # FirecREST shows the str() of asyncssh's exception args tuple
        self.deliver(b"\0" * encoded_length, ApiError(500, "('Channel not open for sending',)"))
        return data

    def view(self, path: str, size: int, offset: int) -> str:
        """``dd bs=size skip=offset//size count=2``, decoded lossily and sliced by characters."""
        try:
            with open(self.local(path, follow=True), "rb") as handle:
                handle.seek((offset // size) * size)
                raw = handle.read(2 * size)
        except (FileNotFoundError, OutsideRoot):
            raise command_error(1, f"dd: failed to open '{path}': No such file or directory") from None
        except IsADirectoryError:
            raise command_error(1, f"dd: error reading '{path}': Is a directory") from None
        text = self.deliver(raw, timed_out()).decode("utf-8", "replace")
        start = offset % size
        return text[start:start + size]

    def head_tail(self, path: str, which: str, count: Optional[int], lines: bool, skip: bool) -> str:
        """``head``/``tail`` by lines or bytes; ``skip`` is ``--bytes=-N`` for head, ``+N`` (1-based) for tail."""
        data = self._read(path, which)
        count = 10 if count is None else count
        if lines:
            output = b"".join(_head_or_tail(data.splitlines(keepends=True), which, count, skip))
        else:
            output = bytes(_head_or_tail(data, which, count, skip))
        return self.deliver(output, timed_out()).decode("utf-8", "replace")

    # -- writing --------------------------------------------------------------------------------------
    def upload(self, directory: str, filename: str, data: bytes):
        """``base64 -d > 'directory/filename'``.  With no input the command never sees EOF: the file is
        created, then the request times out (408) — the real server's empty-upload defect."""
        target = f"{directory}/{filename}"
        with shell_errors(f"bash: line 1: {target}", outside_root=errno.EACCES), \
                open_for_writing(self.root, target) as handle:
            handle.write(data)
        if not data:
            time.sleep(self.limits()[1])
            raise command_error(124, "")

    def mkdir(self, path: str, parent: bool) -> dict:
        with shell_errors(f"mkdir: cannot create directory '{path}'"):
            local = self.local(path)
            if parent:
                os.makedirs(local, exist_ok=True)
                if not os.path.isdir(local):
                    raise FileExistsError(errno.EEXIST, "File exists")
            else:
                os.mkdir(local)
        return self.ls_one(path)

    def symlink(self, target: str, link: str) -> dict:
        with shell_errors(f"ln: failed to create symbolic link '{link}'", outside_root=errno.EACCES):
            local = self.local(link)
            os.symlink(self._link_text_on_disk(os.path.dirname(local), target), local)
        return self.ls_one(link)

    def _link_text_on_disk(self, link_directory: str, target: str) -> str:
        """What a link to ``target`` stores: an absolute target names a path of the served tree (its ``/``
        is the root), so it is stored below the root; a target leading out of the tree is refused."""
        text = os.path.join(self.root, target.lstrip("/")) if target.startswith("/") else target
        check_link_target(self.root, link_directory, text)
        return text

    def readlink(self, local: str) -> str:
        """A link's target as the client sees it (the inverse of ``_link_text_on_disk``)."""
        text = os.readlink(local)
        if text == self.root or text.startswith(self.root + os.sep):
            return "/" + text[len(self.root):].lstrip(os.sep)
        return text

    def chmod(self, path: str, mode: str) -> dict:
        if not re.fullmatch(r"[0-7]{1,4}", mode or ""):
            raise command_error(1, f"chmod: invalid mode: '{mode}'\nTry 'chmod --help' for more information.")
        self._stat(path, f"chmod: cannot access '{path}'", follow=True)
        os.chmod(self.local(path, follow=True), int(mode, 8))
        return self.ls_one(path)

    def chown(self, path: str, owner: str, group: str) -> dict:
        import grp
        import pwd

        try:
            uid = pwd.getpwnam(owner).pw_uid if owner else -1
            gid = grp.getgrnam(group).gr_gid if group else -1
        except KeyError:
            raise command_error(1, f"chown: invalid user: '{owner}:{group}'") from None
        self._stat(path, f"chown: cannot access '{path}'", follow=True)
        try:
            os.chown(self.local(path, follow=True), uid, gid)
        except PermissionError:
            raise command_error(1, f"chown: changing ownership of '{path}': Operation not permitted") from None
        return self.ls_one(path)

    def rm(self, path: str):
        """``rm -r --interactive=never``: recursive, so it deletes non-empty directories too."""
        st = self._stat(path, f"rm: cannot remove '{path}'")
        local = self.local(path)
        try:
            if stat_module.S_ISDIR(st.st_mode):
                shutil.rmtree(local)
            else:
                os.unlink(local)
        except PermissionError:
            raise command_error(1, f"rm: cannot remove '{path}': Permission denied") from None


Piece = TypeVar("Piece")


def _head_or_tail(pieces: Sequence[Piece], which: str, count: int, skip: bool) -> Sequence[Piece]:
    """The lines or bytes ``head``/``tail`` print: the first or last ``count``, or all but those (``skip``)."""
    if which == "head":
        return pieces[:max(len(pieces) - count, 0)] if skip else pieces[:count]
    return pieces[max(count - 1, 0):] if skip else pieces[max(len(pieces) - count, 0):]
