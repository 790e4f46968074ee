"""The documentation's examples, run against the local servers so that they cannot rot.

Convention for the pages listed in ``PAGES``: fenced ```bash and ```python blocks are examples that run.
A page's blocks run in order as one bash script: python blocks become ``python - <<'PYTHON'`` here
documents, so files and exported variables carry over as they do for a reader typing them in. The page
runs in a fresh home directory, with the credentials of its server in the environment (as the page's
setup section tells the reader to export them). The default endpoints in the text (``127.0.0.1:9000``
for UFTP, ``127.0.0.1:8000`` for the EM API, ``127.0.0.1:5000`` for Flux) are replaced by the test server's. Blocks tagged ```sh,
```ini or ```text are shown, not run, but every ``hpcfs`` command line in them must parse.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hpcfs.cli import _parser

REPOSITORY = Path(__file__).resolve().parent.parent
# page -> the local server its examples run against (None: the page starts what it needs itself)
PAGES = {
    "README.md": None,
    "docs/user-guide.md": "uftp",
    "docs/guide/uftp.md": "uftp",
    "docs/guide/firecrest.md": "firecrest",
    "docs/guide/em.md": "em",
    "docs/guide/flux.md": "flux",
    "docs/servers.md": None,
    "docs/troubleshooting.md": "uftp",
}
RUN = {"bash", "python"}
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
CREDENTIAL_VARIABLES = {"UFTP_USER", "UFTP_PASSWORD", "UFTP_TOKEN", "UFTP_IDENTITY", "HPCFS_CA_FILE",
                        "FIRECREST_URL", "AUTH_TOKEN_URL", "FIRECREST_CLIENT_ID", "FIRECREST_CLIENT_SECRET",
                        "EM_USERNAME", "EM_PASSWORD", "EM_PODS", "REQUESTS_CA_BUNDLE"}


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


def server_setup(request, kind):
    """``(environment, substitutions)`` for a page whose examples use server ``kind``."""
    if kind is None:
        return {}, {}
    handle = request.getfixturevalue(f"{kind}_server")
    if kind == "uftp":
        # Ended sessions count against the limit for 5 s more; see test_cli.allow_rapid_uftp_commands.
        handle.knobs.extra["session_limit"] = 1000
        return handle.env, {"127.0.0.1:9000": handle.netloc}
    if kind == "em":
        for volume in ("pod-a", "pod-b"):
            os.makedirs(os.path.join(handle.root, volume), exist_ok=True)
        return handle.env, {"127.0.0.1:8000": f"127.0.0.1:{handle.server.port}"}
    if kind == "flux":
        return handle.env, {"127.0.0.1:5000": f"127.0.0.1:{handle.server.http.port}"}
    return handle.env, {}


def unmount_below(directory):
    with open("/proc/self/mounts") as table:
        mounted = [line.split()[1] for line in table if line.split()[1].startswith(str(directory))]
    for mountpoint in mounted:
        subprocess.run(["fusermount3", "-uz", mountpoint], capture_output=True, timeout=30)
    return mounted


@pytest.mark.timeout(240)
@pytest.mark.parametrize("page", sorted(PAGES))
def test_examples_run(request, tmp_path, page):
    script = page_script(page, {})
    if not script.strip():
        pytest.skip(f"{page} has no runnable examples")
    env_for_server, substitutions = server_setup(request, PAGES[page])
    home = tmp_path / "home"
    work = home / "work"
    work.mkdir(parents=True)
    env = {name: value for name, value in os.environ.items()
           if name not in CREDENTIAL_VARIABLES and not name.startswith("XDG_")}
    env.update(env_for_server, HOME=str(home), PATH=f"{os.path.dirname(sys.executable)}:{env['PATH']}")
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
