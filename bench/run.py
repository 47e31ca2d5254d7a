"""`make bench`: the relay's throughput and latency against nginx on loopback, with ceilings.

Starts everything it needs (nginx, the relay as `push-relay` subprocesses, a Python ceiling
server), runs each measurement bounded in time, stops every process it started by PID, and
writes a markdown table to stdout and bench/results/latest.md (raw figures: latest.json).
See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any

import measure
import procstats
import report
import upstream_connections
from limits_rows import STORES, limits_figures
from nginx_upstream import Nginx, require_tools, start_nginx
from relay_process import RelayProcess, relay_config, start_relay, supports_workers
from shapes import APNS_DEVICE_PATH, FCM_SEND_PATH, write_bodies

from push_relay.testing.ca import TestCA
from push_relay.testing.ports import free_port

HERE = Path(__file__).resolve().parent
ALL_PATHS = ("fcm", "apns")


class OutOfTime(Exception):
    pass


def _wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def _python_ceiling(name: str, extra: list[str], bodies: Path, args: Any) -> dict[str, Any]:
    port = free_port()
    command = [sys.executable, str(HERE / "ceiling_server.py"), "--port", str(port), *extra]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port)
        run = measure.wrk(
            f"http://127.0.0.1:{port}/push",
            bodies,
            expect=204,
            duration=args.duration,
            connections=args.connections,
            groups={"server": lambda: [process.pid]},
        )
    finally:
        process.terminate()
        process.wait(10)
    return measure.peak_entry(name, run)


def ceilings(nginx: Nginx, bodies: Path, args: Any) -> list[dict[str, Any]]:
    """What the machine does without the relay: nginx itself, and the Python HTTP floor."""
    direct = measure.wrk(
        nginx.url + FCM_SEND_PATH,
        bodies,
        expect=200,
        duration=args.duration,
        connections=args.connections,
        groups={"nginx": nginx.pids},
    )
    return [
        measure.peak_entry("wrk → nginx (HTTPS/1.1, FCM path)", direct),
        _python_ceiling("wrk → uvloop+httptools server answering 204", [], bodies, args),
        _python_ceiling("wrk → uvicorn + ASGI app answering 204", ["--uvicorn"], bodies, args),
    ]


def _warm_up(relay: RelayProcess, nginx: Nginx, bodies: dict[str, Path]) -> None:
    """Fetch tokens and open the upstream connections of every worker before measuring."""
    groups = {"relay": relay.pids, "nginx": nginx.pids}
    for path in bodies:
        warm = measure.wrk(
            relay.url + "/push", bodies[path], expect=204, duration=1, connections=8, groups=groups
        )
        if not measure.all_expected(warm.result):
            raise RuntimeError(f"warm-up of {path} failed: {warm.result}; see {relay.log_file}")


def _latency(
    relay: RelayProcess, nginx: Nginx, path: str, peak: float, bodies: Path, args: Any
) -> dict[str, Any]:
    """Relay latency at half its peak, and nginx's own at the same rate; the gap is ours."""
    rate = peak * args.load_fraction
    via = measure.fixed_rate(
        relay.url + "/push",
        bodies,
        rate=rate,
        expect=204,
        duration=args.duration,
        groups={"relay": relay.pids, "nginx": nginx.pids},
    )
    direct_path = FCM_SEND_PATH if path == "fcm" else APNS_DEVICE_PATH + "00" * 32
    direct = measure.fixed_rate(
        nginx.url + direct_path,
        bodies,
        rate=rate,
        expect=200,
        duration=args.duration,
        groups={"nginx": nginx.pids},
        cafile=nginx.ca.ca_file,
    )
    relay_ms, direct_ms = via.result["latency_ms"], direct.result["latency_ms"]
    return {
        "rate": rate,
        "ok": measure.all_expected(via.result) and measure.all_expected(direct.result),
        "relay": via.result,
        "direct": direct.result,
        "added_ms": {p: relay_ms[p] - direct_ms[p] for p in ("p50", "p90", "p99")},
        "relay_cpu_per_1k": measure.per_thousand(via.cpu["relay"], int(via.result["answered"])),
    }


def relay_figures(
    relay: RelayProcess, nginx: Nginx, bodies: dict[str, Path], workers: int, args: Any
) -> dict[str, Any]:
    _warm_up(relay, nginx, bodies)
    groups = {"relay": relay.pids, "nginx": nginx.pids}
    accepted = nginx.accepted_connections()
    paths = measure.peaks(relay.url, bodies, groups, args)
    # the status request itself is one accepted connection
    opened = nginx.accepted_connections() - accepted - 1
    held = upstream_connections.count(nginx.port, relay.pids())
    for path in bodies:
        paths[path]["latency"] = _latency(
            relay, nginx, path, paths[path]["rate"], bodies[path], args
        )
    forked = procstats.children(relay.process.pid)
    return {
        "workers": workers,
        "paths": paths,
        "upstream_connections": {str(pid): n for pid, n in held.items() if n},
        "connections_opened_during_peaks": opened,
        "rss_mb": [procstats.rss_mb(pid) for pid in relay.workers()],
        "main_rss_mb": procstats.rss_mb(relay.process.pid) if forked else None,
    }


def run_all(args: Any, stack: ExitStack) -> dict[str, Any]:
    require_tools("nginx", "wrk", "ss", *(["redis-server"] if "redis" in args.limits else []))
    workdir = Path(tempfile.mkdtemp(prefix="push-relay-bench-"))
    stack.callback(shutil.rmtree, workdir, True)
    ca = TestCA.create(workdir)
    nginx = start_nginx(ca, workdir / "nginx")
    stack.callback(nginx.stop)
    bodies = {path: write_bodies(workdir / f"{path}.txt", path) for path in args.paths}
    machine = {"cpus": os.cpu_count(), "loadavg": os.getloadavg()[0]}
    results: dict[str, Any] = {"settings": vars(args) | machine, "relay": []}
    results["ceilings"] = []
    if not args.no_ceilings:
        print("ceilings ...", file=sys.stderr, flush=True)
        results["ceilings"] = ceilings(nginx, write_bodies(workdir / "ceiling.txt", "fcm"), args)

    config_file = workdir / "config.toml"
    config_file.write_text(relay_config(nginx, workdir, tuple(args.paths)))
    env = os.environ | {"SSL_CERT_FILE": str(ca.ca_file)}
    has_workers = supports_workers()
    results["workers_flag"] = has_workers
    for workers in args.workers:
        if workers != 1 and not has_workers:
            print(
                f"skipping --workers {workers}: this push-relay has no --workers", file=sys.stderr
            )
            continue
        print(f"relay with {workers} worker(s) ...", file=sys.stderr, flush=True)
        relay = start_relay(
            config_file,
            free_port(),
            workdir,
            workers=workers if has_workers else None,
            log_level=args.relay_log_level,
            env=env,
        )
        try:
            results["relay"].append(relay_figures(relay, nginx, bodies, workers, args))
        except Exception:
            kept = args.out.parent / f"failed-relay-{workers}.log"
            kept.parent.mkdir(parents=True, exist_ok=True)
            relay.stop()
            shutil.copyfile(relay.log_file, kept)
            print(f"the relay's log is kept in {kept}", file=sys.stderr)
            raise
        finally:
            relay.stop()
    results["limits"] = []
    for store in args.limits:
        print(f"relay with limits counted in {store} ...", file=sys.stderr, flush=True)
        base = relay_config(nginx, workdir, tuple(args.paths))
        figures = limits_figures(store, nginx, bodies, base, workdir, env, args, stack)
        results["limits"].append(figures)
    return results


def _out_of_time(signum: int, frame: FrameType | None) -> None:
    raise OutOfTime("the benchmark ran past its time limit")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="none: skip")
    parser.add_argument("--paths", nargs="+", choices=ALL_PATHS, default=list(ALL_PATHS))
    parser.add_argument("--no-ceilings", action="store_true", help="measure the relay only")
    parser.add_argument(
        "--limits",
        nargs="*",
        choices=STORES,
        default=list(STORES),
        help="also measure one worker with [limits] counted in these stores (none: skip)",
    )
    parser.add_argument("--load-fraction", type=float, default=0.5, help="of peak, for latency")
    parser.add_argument("--relay-log-level", default="info", help="the relay's --log-level")
    parser.add_argument("--time-limit", type=int, default=290, help="seconds for everything")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "latest.md")
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, _out_of_time)
    signal.alarm(args.time_limit)
    started = time.monotonic()
    with ExitStack() as stack:
        results = run_all(args, stack)
    signal.alarm(0)
    results["seconds"] = round(time.monotonic() - started, 1)
    table = report.render(results)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str))
    return 0 if report.all_answered(results) else 1


if __name__ == "__main__":
    sys.exit(main())
