"""The servers of one run: the local UFTP server (in this process), a loopback sshd, and the delay relays in
front of them."""
import contextlib
import os
import secrets
import subprocess
from pathlib import Path
from typing import Dict

from benchmarks.dataset import DataSet
from benchmarks.ports import free_port, free_port_block, wait_for_port
from benchmarks.processes import stop_process
from benchmarks.relay import DelayProxy
from benchmarks.settings import DATA_PORTS, DATA_RELAY_WINDOW, SSH_RELAY_WINDOW

SFTP_SERVER = "/usr/lib/openssh/sftp-server"


class Sshd:
    """A loopback OpenSSH sshd with its own host key, config and authorised client key (login by key only,
    sftp subsystem), plus the client's ssh config for sshfs.  Everything lives in this run's private
    directory (``mkdtemp``, 0700) with keys made fresh for the run, and sshd keeps ``StrictModes yes``: the
    authorised key comes from ``AuthorizedKeysCommand`` because StrictModes refuses any key file below the
    world-writable /tmp."""

    def __init__(self, run_dir: Path, logs: Path):
        self.dir = run_dir / "ssh"
        self.logs = logs
        self.key = self.dir / "client_key"
        self.port = free_port()
        self.user = os.environ.get("USER") or "root"
        self.process = None

    def start(self):
        self.dir.mkdir(mode=0o700)  # a fresh directory: fails if anything is already there
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / name)], check=True)
        config = self.dir / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress 127.0.0.1:{self.port}", f"HostKey {self.dir / 'host_key'}", "AuthorizedKeysFile none",
            f"AuthorizedKeysCommand /bin/cat {self.dir / 'client_key.pub'}", f"AuthorizedKeysCommandUser {self.user}",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes yes",
            "PidFile none", "MaxSessions 100", "MaxStartups 100", "LogLevel ERROR",
            f"Subsystem sftp {SFTP_SERVER}", "",
        ]))
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        with open(self.logs / "sshd.log", "ab") as log:
            self.process = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stdout=log,
                                            stderr=log, start_new_session=True)
        wait_for_port(self.port, self.process, "sshd")
        return self

    def client_config(self, ports: Dict[int, int]) -> Path:
        """An ssh config with one host alias per round trip (``bench-rtt0``, ``bench-rtt10``)."""
        path = self.dir / "ssh_config"
        blocks = []
        for rtt, port in ports.items():
            blocks += [f"Host bench-rtt{rtt}", "  HostName 127.0.0.1", f"  Port {port}", f"  User {self.user}",
                       f"  IdentityFile {self.key}", "  IdentitiesOnly yes", "  BatchMode yes",
                       "  StrictHostKeyChecking no", "  UserKnownHostsFile /dev/null", "  LogLevel ERROR"]
        path.write_text("\n".join(blocks) + "\n")
        return path

    def stop(self):
        stop_process(self.process)


class Site:
    """The servers of one run: UFTP in this process, sshd and the delay relays in subprocesses.  Each client
    gets its own UFTP user, so one peer's leaked sessions never count against another's session limit.

    The UFTP server's data listeners use a fixed port range; the data relay listens on the same range
    shifted by ``DATA_PORTS`` and forwards each port to its partner.  At 10 ms the server advertises the
    shifted ports in its 227/229 replies, so every UFTP client's data connections go through the relay."""

    CLIENTS = ("hpcfs", "pyuftp", "pyunicore")

    def __init__(self, data: DataSet, run_dir: Path, logs: Path):
        from hpcfs.servers.uftp import UFTPServer  # only the orchestrating process needs hpcfs

        self.data = data
        self.passwords = {name: secrets.token_urlsafe(12) for name in self.CLIENTS}
        tls = run_dir / "tls"
        tls.mkdir(mode=0o700)
        first = free_port_block(2 * DATA_PORTS)
        self.data_ports = range(first, first + DATA_PORTS)
        self.uftp = UFTPServer(str(data.root), dict(self.passwords), tls_dir=str(tls),
                               data_port_range=(self.data_ports[0], self.data_ports[-1]))
        self.sshd = Sshd(run_dir, logs)
        self.proxy = DelayProxy({free_port(): self.sshd.port}, SSH_RELAY_WINDOW, logs, "proxy")
        relayed = {port + DATA_PORTS: port for port in self.data_ports}
        self.data_relay = DelayProxy(relayed, DATA_RELAY_WINDOW, logs, "data-relay")
        self.ssh_config = None
        self.rtt = 0

    def start(self):
        self.uftp.start()
        self.sshd.start()
        self.proxy.start()
        self.ssh_config = self.sshd.client_config({0: self.sshd.port, 10: self.proxy.port})
        self.data_relay.start()
        return self

    def stop(self):
        for stop in (self.proxy.stop, self.data_relay.stop, self.sshd.stop, self.uftp.stop):
            with contextlib.suppress(Exception):
                stop()

    def set_rtt(self, rtt_ms: int):
        """UFTP: every command reply (control channel and Auth REST) waits one full round trip, and data
        connections go through the data relay.  SSH: the proxy is used instead of the direct port."""
        self.rtt = rtt_ms
        self.uftp.knobs.latency = rtt_ms / 1000.0
        self.uftp.knobs.extra["advertised_data_port_offset"] = DATA_PORTS if rtt_ms else 0

    @property
    def auth_url(self):
        return self.uftp.auth_url

    def uftp_env(self, client: str) -> Dict[str, str]:
        return {"UFTP_USER": client, "UFTP_PASSWORD": self.passwords[client], "HPCFS_CA_FILE": self.uftp.cert_file}

    @property
    def ssh_host(self):
        return f"bench-rtt{self.rtt}"

    @property
    def ssh_port(self):
        return self.sshd.port if self.rtt == 0 else self.proxy.port

    def requests(self) -> "RequestWindow":
        return RequestWindow(self.uftp.log.entries)


class RequestWindow:
    """The UFTP server's requests from now on, as ``(kind, detail)`` pairs."""

    def __init__(self, entries: list):
        self._entries = entries
        self._start = len(entries)

    def made(self) -> list:
        return self._entries[self._start:]
