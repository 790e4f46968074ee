"""Side-by-side benchmark of hpcfs against sshfs, rclone mount, pyuftp cp and PyUNICORE 1.3.7's FUSE driver.

Everything runs on this machine and binds 127.0.0.1.  The local UFTP server runs inside this process (its
request log gives hpcfs's server request counts); a loopback OpenSSH sshd serves the same directory to the
SFTP peers.  Every workload runs twice: on plain loopback and with 10 ms round trip injected by user-space
delay relays (``relay``) that hold every chunk 5 ms in each direction: one in front of sshd, one in front of
the UFTP server's data ports; UFTP commands are delayed by the server's latency knob.  Each measurement gets
a fresh mount; every command has a time limit; every mount is unmounted and every process this package
started is stopped on the way out.

    ./scripts/bench [--quick] [--peers hpcfs,sshfs,...] [--workloads seq-read,...]
    .venv/bin/python -m benchmarks ...   (the same, without scripts/install --bench first)

One job a module:

- ``cli``: the options and the run; ``__main__`` runs it.
- ``settings``: paths, units, round trips, relay windows, the data set's sizes.
- ``dataset``: the served tree and the private scratch directory.
- ``ports``, ``processes``, ``mounts``: free ports; timed, bounded commands; FUSE mounts up and down.
- ``relay``: the delay relay (also its own subprocess: ``python -m benchmarks.relay``).
- ``servers``: the run's local UFTP server, sshd and relays; ``context``: what every workload is handed.
- ``peers``: the clients that mount the tree, as command lines.
- ``workloads``: the mount workloads and the loop over peers and round trips; ``randread`` is the random
  reader's own process (``python -m benchmarks.randread``).
- ``pyuftp``, ``lines``, ``real_uftpd``, ``real_firecrest``: the rows of the official clients, the Python
  front ends and the real servers (``kit`` finds those); ``copies`` times and checks copies to local disk,
  ``disk`` says where they land and keeps the disk busy; ``checks`` compares bytes.
- ``results``, ``targets``, ``facts``, ``report``: what was measured, the ratios against the targets, the
  machine, and the Markdown of docs/benchmarks.md.
- ``profile``: where the mount's time goes (``python -m benchmarks.profile``): syscalls, server commands and
  py-spy samples per MiB or per read.
"""
