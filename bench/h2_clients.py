"""Which HTTP/2 state machine should `push_relay.http2` run on: `h2` or its fork `jh2`?

Runs the relay's own `H2Client` against nginx (TLS + HTTP/2 on 127.0.0.1), one connection,
256 concurrent streams, FCM-shaped requests, once on top of each library; each run is a fresh
process (uvloop) so that the two never share state. Prints req/s and client CPU per request.

    uv run python bench/h2_clients.py [--requests 40000] [--rounds 3]

`jh2` has the same API as `h2` under another name; `push_relay.http2` imports `jh2`, so the
`h2` run maps the `jh2` module names onto `h2` before importing it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
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
_H2_MODULES = ("config", "connection", "errors", "events", "exceptions", "settings")
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


def use_library(name: str) -> None:
    """Make `import jh2.<module>` resolve to `name` (the jh2 fork itself, or h2)."""
    if name == "jh2":
        return
    sys.modules["jh2"] = importlib.import_module(name)
    for module in _H2_MODULES:
        sys.modules[f"jh2.{module}"] = importlib.import_module(f"{name}.{module}")


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


def run_one(library: str, url: str, cafile: str, requests: int) -> dict[str, float]:
    """One measurement in a fresh interpreter."""
    child = subprocess.run(
        [sys.executable, __file__, "--child", library, url, cafile, str(requests)],
        capture_output=True,
        text=True,
    )
    if child.returncode != 0:
        raise RuntimeError(f"{library} run failed:\n{child.stderr}")
    result: dict[str, float] = json.loads(child.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=4, metavar=("LIB", "URL", "CAFILE", "N"))
    args = parser.parse_args()
    if args.child:
        library, url, cafile, n = args.child
        use_library(library)
        import uvloop

        print(json.dumps(uvloop.run(measure(url, cafile, int(n)))))
        return

    with tempfile.TemporaryDirectory(prefix="h2-clients-") as tmp:
        ca = TestCA.create(Path(tmp))
        nginx = start_nginx(ca, Path(tmp) / "nginx")
        try:
            print(f"nginx {nginx.url}: 1 connection, {CONCURRENCY} concurrent streams")
            for library in ("h2", "jh2"):
                runs = [
                    run_one(library, nginx.url, str(ca.ca_file), args.requests)
                    for _ in range(args.rounds)
                ]
                rates = [r["req_per_s"] for r in runs]
                cpu = statistics.median(r["cpu_us_per_req"] for r in runs)
                conns = max(r["connections"] for r in runs)
                print(
                    f"{library:4} median {statistics.median(rates):8,.0f} req/s "
                    f"(runs: {', '.join(f'{r:,.0f}' for r in rates)}); "
                    f"client CPU {cpu:.1f} µs/request; connections {conns:.0f}"
                )
        finally:
            nginx.stop()


if __name__ == "__main__":
    main()
