"""The protocols hpcfs speaks: one record per URL scheme, and everything else derived from it.

URL parsing (``hpcfs/urls.py``), the PyFilesystem2 openers and the fsspec protocol names
(``hpcfs/frontends``; each scheme also as its unambiguous alias ``hpcfs+<scheme>``), the CLI's scheme lists
and ``serve`` sub-commands, and the tests that run for every protocol all read this table; ``setup.cfg``
declares the same entry points (a test compares them).  Modules are named by dotted strings, so importing
this module loads no protocol code: a command pays only for the protocol whose URL it opens, and only
``hpcfs serve`` loads a server.
"""
import importlib
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple


@dataclass(frozen=True)
class Protocol:
    scheme: str  # the URL scheme, also the PyFilesystem2 and fsspec protocol name
    title: str  # how messages and help texts name it
    package: str  # the protocol package: its options.py (options_class) and backend.py (backend_from_url)
    options_class: str  # the typed options dataclass in <package>.options
    server: str  # the local server module (add_arguments/serve for ``hpcfs serve <scheme>``)
    opener: str  # the PyFilesystem2 Opener class in hpcfs.frontends.pyfs (named by setup.cfg's fs.opener)
    # The pytest fixture (in tests/fixtures_<scheme>.py) that starts the local server and gives its handle:
    # the suites that run for every protocol, and the guide's examples, ask for it by this name.
    fixture: str
    guide: str  # the user guide's page, whose examples tests/test_docs.py runs against that server
    # Where ``hpcfs serve <scheme>`` listens unless told otherwise; the guide's examples name this port.
    default_port: Optional[int] = None
    # Where the service ends inside the URL path: the service is everything before the first occurrence of
    # this marker (UFTP's ``/rest/auth/SERVER:/base``); None: the service is the URL's authority alone.
    service_end: Optional[str] = None
    read_only: bool = False

    @property
    def backend_module(self) -> str:
        return f"{self.package}.backend"

    @property
    def options_module(self) -> str:
        return f"{self.package}.options"

    def backend_from_url(self, parsed_url: Any, options: Dict[str, Any]) -> Tuple[Any, str]:
        """``(backend, root)``: imports the protocol's backend module only now."""
        return importlib.import_module(self.backend_module).backend_from_url(parsed_url, options)

    def options(self) -> Any:
        """The protocol's options dataclass (a :class:`hpcfs.options.BackendOptions` subclass)."""
        return getattr(importlib.import_module(self.options_module), self.options_class)

    def server_module(self) -> Any:
        return importlib.import_module(self.server)

    @property
    def alias(self) -> str:
        """``hpcfs+<scheme>``: the scheme no other package registers (PyUNICORE has a ``uftp`` opener too)."""
        return ALIAS_PREFIX + self.scheme

    @property
    def alias_opener(self) -> str:
        """The PyFilesystem2 Opener class for :attr:`alias` in hpcfs.frontends.pyfs."""
        return "Hpcfs" + self.opener


ALIAS_PREFIX = "hpcfs+"


PROTOCOLS: Tuple[Protocol, ...] = (
    Protocol("uftp", "UFTP", "hpcfs.uftp", "UFTPOptions", "hpcfs.servers.uftp", "UFTPOpener",
             fixture="uftp_server", guide="docs/guide/uftp.md", default_port=9000, service_end=":/"),
    Protocol("firecrest", "FirecREST", "hpcfs.firecrest", "FirecrestOptions", "hpcfs.servers.firecrest",
             "FirecrestOpener", fixture="firecrest_server", guide="docs/guide/firecrest.md", default_port=8000),
    # 8090, not FirecREST's 8000: the guides start both servers side by side
    Protocol("em", "EM API", "hpcfs.em", "EMOptions", "hpcfs.servers.em", "EMOpener",
             fixture="em_server", guide="docs/guide/em.md", default_port=8090),
    # 5000: flux-restful-api's own port
    Protocol("flux", "Flux", "hpcfs.flux", "FluxOptions", "hpcfs.servers.flux", "FluxOpener",
             fixture="flux_server", guide="docs/guide/flux.md", default_port=5000, read_only=True),
    # 7777: UNICORE/X's own port behind a site's gateway; the storage ends at the ':' (as in uftp://)
    Protocol("unicore", "UNICORE", "hpcfs.unicore", "UnicoreOptions", "hpcfs.servers.unicore", "UnicoreOpener",
             fixture="unicore_server", guide="docs/guide/unicore.md", default_port=7777, service_end=":/"),
)

BY_SCHEME: Dict[str, Protocol] = {protocol.scheme: protocol for protocol in PROTOCOLS}
SCHEMES: Tuple[str, ...] = tuple(BY_SCHEME)
WRITABLE_SCHEMES: Tuple[str, ...] = tuple(protocol.scheme for protocol in PROTOCOLS if not protocol.read_only)
ALIASES: Tuple[str, ...] = tuple(protocol.alias for protocol in PROTOCOLS)


def canonical_scheme(scheme: str) -> str:
    """The scheme an alias stands for (``hpcfs+uftp`` -> ``uftp``); any other scheme unchanged."""
    return scheme[len(ALIAS_PREFIX):] if scheme.startswith(ALIAS_PREFIX) else scheme


def protocol_for(scheme: str) -> Protocol:
    """The record of a scheme; KeyError for one hpcfs does not speak (urls.parse says so to users)."""
    return BY_SCHEME[scheme]


def url_examples() -> str:
    """``uftp://, firecrest://, em://, flux://`` for help texts."""
    return ", ".join(f"{scheme}://" for scheme in SCHEMES)
