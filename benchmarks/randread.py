"""The random-read workload's reader, run in its own process on the mount:
``python -m benchmarks.randread FILE REFERENCE COUNT SEED``."""
import json
import os
import random
import sys
import time


def random_reads_main(path, reference, count, seed):
    """``count`` 4 KiB reads at random offsets of ``path``, each compared with ``reference``; prints JSON."""
    count, size = int(count), os.path.getsize(reference)
    rng = random.Random(int(seed))
    offsets = [rng.randrange(0, size - 4096) for _ in range(count)]
    with open(reference, "rb") as ref:
        expected = [os.pread(ref.fileno(), 4096, offset) for offset in offsets]
    fd = os.open(path, os.O_RDONLY)
    try:
        start = time.perf_counter()
        got = [os.pread(fd, 4096, offset) for offset in offsets]
        seconds = time.perf_counter() - start
    finally:
        os.close(fd)
    wrong = sum(1 for a, b in zip(got, expected) if a != b)
    print(json.dumps({"seconds": seconds, "wrong": wrong}))


if __name__ == "__main__":
    random_reads_main(*sys.argv[1:])
