"""How much CPU does `push_relay.http2`'s client spend per request?

Runs the relay's own `H2Client` against nginx (TLS + HTTP/2 on 127.0.0.1), one connection,
256 concurrent streams, FCM-shaped requests; each round is a fresh process (uvloop). Prints
req/s and client CPU per request (the figure includes TLS and the event loop).

    uv run python bench/h2_clients.py [--requests 40000] [--rounds 3]

History, on the 2-vCPU development machine (3 rounds of 40,000): on top of `h2`'s state
machine the client needed 129 µs of CPU per request (7,600 req/s), on its fork `jh2` with a
compiled HPACK codec 93 µs (10,600 req/s), with its own framing layer (`_h2frames` and the
modules beside it; HPACK still jh2's codec) 18 µs (55,000 req/s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nginx_upstream import start_nginx

from push_relay.testing.ca import TestCA

CONCURRENCY = 256
_BODY = json.dumps(
    {
        "message": {
            "token": "t" * 152,
            "data": {"wcs": "123deadbeef", "wct": "1700000000", "wcv": "3"},
            "android": {"collapse_key": "relay.x", "priority": "HIGH", "ttl": "90s"},
        }
    },
    separators=(",", ":"),
).encode()


async def measure(url: str, cafile: str, requests: int) -> dict[str, float]:
    from push_relay import http2, tls

    context = tls.client_context(["h2"])
    context.load_verify_locations(cafile=cafile)
    client = http2.H2Client(url, context)
    headers = [
        ("authorization", "Bearer ya29.bench-token"),
        ("content-type", "application/json"),
    ]
    path = "/v1/projects/bench/messages:send"
    per_worker = requests // CONCURRENCY

    async def worker() -> None:
        for _ in range(per_worker):
            response = await client.request("POST", path, headers, _BODY)
            if response.status != 200:
                raise RuntimeError(f"nginx answered {response.status}")

    await asyncio.gather(*(worker() for _ in range(8)))  # warm-up: connection, TLS, tables
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await client.aclose()
    done = per_worker * CONCURRENCY
    return {
        "req_per_s": done / wall,
        "cpu_us_per_req": cpu / done * 1e6,
        "connections": client.connections_opened,
    }


def run_one(url: str, cafile: str, requests: int) -> dict[str, float]:
    """One measurement in a fresh interpreter."""
    child = subprocess.run(
        [sys.executable, __file__, "--child", url, cafile, str(requests)],
        capture_output=True,
        text=True,
    )
    if child.returncode != 0:
        raise RuntimeError(f"run failed:\n{child.stderr}")
    result: dict[str, float] = json.loads(child.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("URL", "CAFILE", "N"))
    args = parser.parse_args()
    if args.child:
        url, cafile, n = args.child
        import uvloop

        print(json.dumps(uvloop.run(measure(url, cafile, int(n)))))
        return

    with tempfile.TemporaryDirectory(prefix="h2-clients-") as tmp:
        ca = TestCA.create(Path(tmp))
        nginx = start_nginx(ca, Path(tmp) / "nginx")
        try:
            print(f"nginx {nginx.url}: 1 connection, {CONCURRENCY} concurrent streams")
            runs = [run_one(nginx.url, str(ca.ca_file), args.requests) for _ in range(args.rounds)]
            rates = [r["req_per_s"] for r in runs]
            cpu = statistics.median(r["cpu_us_per_req"] for r in runs)
            conns = max(r["connections"] for r in runs)
            print(
                f"median {statistics.median(rates):8,.0f} req/s "
                f"(runs: {', '.join(f'{r:,.0f}' for r in rates)}); "
                f"client CPU {cpu:.1f} µs/request; connections {conns:.0f}"
            )
        finally:
            nginx.stop()


if __name__ == "__main__":
    main()
