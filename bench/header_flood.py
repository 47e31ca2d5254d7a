"""Memory of one relay worker while many clients trickle request heads (contract §12).

    uv run python bench/header_flood.py --connections 2000 --head-kib 16

Starts `push-relay` (one process, no backend, loopback only), opens `--connections` connections
and has each send a request head of `--head-kib` KiB in 1 KiB pieces without ever finishing
it (the limit is 16 KiB: a head of 16 KiB is still being read, one byte more is refused).
Prints the worker's RSS before, while every connection holds its head, and after they close,
then stops the relay by its PID. Bounded: the connections and the relay end within
`--hold` seconds (plus start-up), whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import procstats

from push_relay.testing.ports import free_port

PUSH_RELAY = Path(sys.executable).with_name("push-relay")


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def start_relay(directory: Path, port: int) -> subprocess.Popen[bytes]:
    config = directory / "relay.toml"
    config.write_text("[server]\nheader_timeout_secs = 60\n")
    process = subprocess.Popen(
        [str(PUSH_RELAY), "-c", str(config), "-l", f"127.0.0.1:{port}", "--log-level", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return process
        except OSError:
            time.sleep(0.1)
    procstats.terminate(process, 5)
    raise SystemExit("push-relay did not start")


async def trickle(port: int, head_kib: int, held: asyncio.Event, gone: list[int]) -> None:
    """One connection: a head of `head_kib` KiB in 1 KiB writes, never finished."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        gone.append(1)
        return
    start = b"POST /push HTTP/1.1\r\nHost: relay\r\n"
    line = b"X-Pad: " + b"p" * (1024 - 9) + b"\r\n"  # 1 KiB per header line
    try:
        writer.write(start)
        for _ in range(head_kib - 1):
            writer.write(line)
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"X-Last: " + b"p" * (1024 - len(start) - 10) + b"\r\n")
        await writer.drain()
        await held.wait()
    except OSError:
        gone.append(1)
    finally:
        writer.close()


async def flood(pid: int, port: int, connections: int, head_kib: int, hold: float) -> None:
    held = asyncio.Event()
    gone: list[int] = []
    before = procstats.rss_mb(pid)
    tasks = [asyncio.create_task(trickle(port, head_kib, held, gone)) for _ in range(connections)]
    started = time.monotonic()
    peak = before
    while time.monotonic() - started < hold:  # sample until the heads are all written
        await asyncio.sleep(0.25)
        peak = max(peak, procstats.rss_mb(pid))
        if all(t.done() for t in tasks):
            break
    peak = max(peak, procstats.rss_mb(pid))
    held.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    await asyncio.sleep(1)
    after = procstats.rss_mb(pid)
    print(f"connections {connections}, head {head_kib} KiB each, refused or dropped {len(gone)}")
    print(
        f"worker RSS: before {before:.1f} MiB, peak while held {peak:.1f} MiB, "
        f"after close {after:.1f} MiB"
    )
    print(f"per held connection: {(peak - before) * 1024 / max(connections, 1):.1f} KiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--head-kib", type=int, default=16)
    parser.add_argument("--hold", type=float, default=30.0, help="seconds at most")
    args = parser.parse_args()
    raise_fd_limit(args.connections * 2 + 256)  # the relay inherits the raised limit
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="header-flood-") as tmp:
        relay = start_relay(Path(tmp), port)
        try:
            asyncio.run(flood(relay.pid, port, args.connections, args.head_kib, args.hold))
        finally:
            procstats.terminate(relay, 10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
