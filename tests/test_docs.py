"""The documentation's examples, run against the local servers so that they cannot rot.

Convention for the pages listed in ``PAGES``: fenced ```bash and ```python blocks are examples that run.
A page's blocks run in order as one bash script: python blocks become ``python - <<'PYTHON'`` here
documents, so files and exported variables carry over as they do for a reader typing them in. The page
runs in a fresh home directory, with the credentials of its server in the environment (as the page's
setup section tells the reader to export them), and with the ``hpcfs`` and ``python`` of a virtualenv made
as the docs say: ``scripts/install``, then the ``pip install`` lines the pages give for their extras. The default endpoint in the text
(``127.0.0.1:<default_port>`` of the protocol in hpcfs/registry.py) is replaced by the test server's. Blocks tagged ```sh,
```ini or ```text are shown, not run, but every ``hpcfs`` command line in them must parse.
"""
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from hpcfs.cli import _parser
from hpcfs.registry import PROTOCOLS, protocol_for
from mounting import CREDENTIAL_VARIABLES as PROTOCOL_VARIABLES

REPOSITORY = Path(__file__).resolve().parent.parent
# page -> the scheme whose local server its examples run against (None: the page starts what it needs itself)
PAGES = {
    "README.md": None,
    "docs/user-guide.md": "uftp",
    **{protocol.guide: protocol.scheme for protocol in PROTOCOLS},
    "docs/guide/options.md": None,
    "docs/servers.md": None,
    "docs/troubleshooting.md": "uftp",
}
# What the pages tell a reader to install beyond scripts/install, for the examples that need it.
DOCUMENTED_INSTALLS = {"docs/user-guide.md": "pip install pandas dask", "docs/servers.md": "pip install pytest pandas"}
DOCS_VENV_SECONDS = 600
RUN = {"bash", "python"}
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
CREDENTIAL_VARIABLES = PROTOCOL_VARIABLES | {"REQUESTS_CA_BUNDLE"}


def fenced_blocks(page):
    return [(match.group(1), match.group(2)) for match in FENCE.finditer((REPOSITORY / page).read_text())]


def page_script(page, substitutions):
    parts = []
    for language, code in fenced_blocks(page):
        for default, actual in substitutions.items():
            code = code.replace(default, actual)
        if language == "bash":
            parts.append(code)
        elif language == "python":
            parts.append(f"python - <<'PYTHON'\n{code}PYTHON\n")
    return "\n".join(parts)


def server_setup(request, scheme):
    """``(environment, substitutions)`` for a page whose examples use the local server of ``scheme``."""
    if scheme is None:
        return {}, {}
    protocol = protocol_for(scheme)
    handle = request.getfixturevalue(protocol.fixture)
    handle.allow_rapid_commands()  # a page runs many commands in a row
    default = f"127.0.0.1:{protocol.default_port}"
    return handle.env, {default: handle.netloc} if protocol.default_port else {}


def unmount_below(directory):
    with open("/proc/self/mounts") as table:
        mounted = [line.split()[1] for line in table if line.split()[1].startswith(str(directory))]
    for mountpoint in mounted:
        subprocess.run(["fusermount3", "-uz", mountpoint], capture_output=True, timeout=30)
    return mounted


@pytest.fixture(scope="session")
def docs_venv():
    """A virtualenv made by ``HPCFS_VENV=DIR scripts/install`` plus the documented ``pip install`` lines,
    built once and kept under /tmp while scripts/install, its lock, setup.cfg and those lines are unchanged (the
    editable install points at this checkout, so its path is part of the key too)."""
    for page, command in DOCUMENTED_INSTALLS.items():
        assert command in (REPOSITORY / page).read_text(), f"{page} no longer says `{command}`"
    key = hashlib.sha256(b"\0".join([
        str(REPOSITORY).encode(), (REPOSITORY / "setup.cfg").read_bytes(),
        (REPOSITORY / "scripts/install").read_bytes(), (REPOSITORY / "requirements/runtime.txt").read_bytes(),
        *map(str.encode, DOCUMENTED_INSTALLS.values()),
    ])).hexdigest()[:16]
    venv = Path(f"/tmp/hpcfs-docs-venv-{key}")
    with open(f"{venv}.lock", "w") as lock:  # parallel test runs build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / "ready").exists():
            _build_docs_venv(venv)
    return venv


def _build_docs_venv(venv):
    shutil.rmtree(venv, ignore_errors=True)
    env = {**os.environ, "HPCFS_VENV": str(venv)}
    subprocess.run([str(REPOSITORY / "scripts/install")], env=env, check=True, capture_output=True,
                   timeout=DOCS_VENV_SECONDS)
    # The user guide's fsspec examples need nothing beyond scripts/install (dask, below, would bring it too).
    subprocess.run([str(venv / "bin/python"), "-c", "import fsspec, hpcfs"], check=True, timeout=60)
    for command in dict.fromkeys(DOCUMENTED_INSTALLS.values()):
        subprocess.run([str(venv / "bin" / command.split()[0]), *command.split()[1:]], check=True,
                       capture_output=True, timeout=DOCS_VENV_SECONDS)
    (venv / "ready").touch()


@pytest.mark.timeout(DOCS_VENV_SECONDS + 240)
@pytest.mark.parametrize("page", sorted(PAGES))
def test_examples_run(request, tmp_path, page, docs_venv):
    script = page_script(page, {})
    if not script.strip():
        pytest.skip(f"{page} has no runnable examples")
    env_for_server, substitutions = server_setup(request, PAGES[page])
    home = tmp_path / "home"
    work = home / "work"
    work.mkdir(parents=True)
    env = {name: value for name, value in os.environ.items()
           if name not in CREDENTIAL_VARIABLES and not name.startswith("XDG_")}
    env = {name: value for name, value in env.items() if name not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(env_for_server, HOME=str(home), PATH=f"{docs_venv / 'bin'}:{env['PATH']}")
    try:
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", page_script(page, substitutions)], cwd=work,
                                env=env, capture_output=True, text=True, timeout=200)
    finally:
        left_mounted = unmount_below(tmp_path)
    assert result.returncode == 0, f"{page}: exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert not left_mounted, f"{page} leaves {left_mounted} mounted"


def hpcfs_command_lines(code):
    """``hpcfs ...`` commands in a block (continuation lines joined, comments dropped)."""
    text = code.replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        for command in re.split(r"\s*(?:&&|\|\||;|\|)\s*", line):
            if command.startswith("hpcfs "):
                yield re.split(r"\s+(?:\d?>|<|&$)", command)[0]  # without redirections and a trailing &


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_hpcfs_command_shown_parses(page):
    parser = _parser()
    for language, code in fenced_blocks(page):
        for command in hpcfs_command_lines(code):
            words = shlex.split(command, comments=True)[1:]
            try:
                parser.parse_args(words)
            except SystemExit:
                pytest.fail(f"{page}: `{command}` is not a valid hpcfs command line")


def test_readme_opens_with_the_two_commands_for_a_fresh_machine():
    text = (REPOSITORY / "README.md").read_text()
    first_content = [line for line in text.splitlines() if line.strip() and not line.startswith("#")][:4]
    assert first_content == ["```sh", "./scripts/demo", "./scripts/test", "```"], first_content


def test_every_page_links_to_files_that_exist():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (REPOSITORY / page).read_text()):
            if "://" in target:
                continue
            assert (REPOSITORY / page).parent.joinpath(target).resolve().exists(), f"{page} links to missing {target}"
