"""Count the relay's TCP connections to the upstream, per relay process, with `ss`."""

from __future__ import annotations

import re
import subprocess
from collections import Counter

_PID = re.compile(r"pid=(\d+)")


def count(port: int, pids: list[int]) -> dict[int, int]:
    """Established connections to 127.0.0.1:`port` held by each of `pids` (0 when none)."""
    listing = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( dport = :{port} )"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    held: Counter[int] = Counter()
    for line in listing.splitlines():
        # a socket shared by processes (inherited across fork) lists each of them
        for pid in {int(p) for p in _PID.findall(line)}:
            held[pid] += 1
    return {pid: held[pid] for pid in pids}
