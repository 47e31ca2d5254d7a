"""One bounded measurement: run wrk or the load generator, and charge CPU to each process.

CPU comes from /proc for the long-running processes (relay, nginx) and from the kernel's
rusage of reaped children for the load generator, which is the only child that exits
during a measurement.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import procstats

HERE = Path(__file__).resolve().parent
LOAD_GENERATOR = "load generator"


@dataclass(frozen=True, slots=True)
class Measured:
    result: dict[str, Any]  # the tool's BENCH-JSON line
    cpu: dict[str, float]  # CPU seconds per process group during the run
    wall: float  # seconds


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_tool(
    command: list[str], groups: Mapping[str, Callable[[], list[int]]], timeout: float
) -> Measured:
    """Run `command` to completion (killed after `timeout` s) and parse its BENCH-JSON."""
    pids = {name: find() for name, find in groups.items()}
    before = {name: procstats.total_cpu(p) for name, p in pids.items()}
    children_before = _children_cpu()
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    wall = time.perf_counter() - started
    cpu = {name: procstats.total_cpu(p) - before[name] for name, p in pids.items()}
    cpu[LOAD_GENERATOR] = _children_cpu() - children_before
    return Measured(parse_result(command, done.returncode, done.stdout, done.stderr), cpu, wall)


def parse_result(
    command: list[str], status: int | None, stdout: str, stderr: str
) -> dict[str, Any]:
    """The `BENCH-JSON {...}` line that push.lua and loadgen.py print."""
    for line in stdout.splitlines():
        if line.startswith("BENCH-JSON "):
            result: dict[str, Any] = json.loads(line.removeprefix("BENCH-JSON "))
            return result
    raise RuntimeError(
        f"{Path(command[0]).name} exited with {status} and no result:\n"
        f"{stdout[-1500:]}{stderr[-1500:]}"
    )


def wrk(
    url: str,
    bodies: Path,
    *,
    expect: int,
    duration: float,
    connections: int,
    groups: Mapping[str, Callable[[], list[int]]],
) -> Measured:
    """Closed loop: `connections` connections each send the next request on every answer."""
    command = wrk_command(url, bodies, expect=expect, duration=duration, connections=connections)
    return run_tool(command, groups, timeout=duration + 30)


def wrk_command(
    url: str, bodies: Path, *, expect: int, duration: float, connections: int
) -> list[str]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "5s"]
    return [*command, "-s", str(HERE / "push.lua"), url, "--", str(bodies), str(expect)]


def fixed_rate(
    url: str,
    bodies: Path,
    *,
    rate: float,
    expect: int,
    duration: float,
    groups: Mapping[str, Callable[[], list[int]]],
    cafile: Path | None = None,
) -> Measured:
    """Open loop at `rate` requests/s (see loadgen.py)."""
    command = fixed_rate_command(
        url, bodies, rate=rate, expect=expect, duration=duration, cafile=cafile
    )
    return run_tool(command, groups, timeout=duration + 30)


def fixed_rate_command(
    url: str, bodies: Path, *, rate: float, expect: int, duration: float, cafile: Path | None
) -> list[str]:
    command = [sys.executable, str(HERE / "loadgen.py"), "--url", url, "--rate", f"{rate:.0f}"]
    command += ["--duration", f"{duration:g}", "--bodies", str(bodies), "--expect", str(expect)]
    if cafile is not None:
        command += ["--cafile", str(cafile)]
    return command


def per_thousand(cpu_seconds: float, requests: int) -> float:
    """CPU seconds per 1,000 requests."""
    return cpu_seconds / requests * 1000 if requests else float("nan")


def rate(measured: Measured) -> float:
    """Requests per second of a wrk run."""
    return rate_of(measured.result)


def rate_of(result: dict[str, Any]) -> float:
    return float(result["requests"]) / (result["duration_us"] / 1e6)


def all_expected(result: dict[str, Any]) -> bool:
    """Every request answered, with the expected status, and no socket error."""
    if "errors" in result:  # wrk
        return result["unexpected_status"] == 0 and not any(result["errors"].values())
    return bool(
        result["unanswered"] == 0
        and result["unexpected_status"] == 0
        and result["lost_connections"] == 0
    )


def peak_entry(name: str, run: Measured) -> dict[str, Any]:
    """One closed-loop measurement as the report reads it."""
    requests = int(run.result["requests"])
    return {
        "name": name,
        "rate": rate(run),
        "requests": requests,
        "ok": all_expected(run.result),
        "wrk": run.result,
        "cpu_per_1k": {k: per_thousand(v, requests) for k, v in run.cpu.items()},
    }


def peaks(
    url: str, bodies: Mapping[str, Path], groups: Mapping[str, Callable[[], list[int]]], args: Any
) -> dict[str, dict[str, Any]]:
    """The closed-loop peak of each path's bodies against the relay at `url`, in turn."""
    paths: dict[str, dict[str, Any]] = {}
    for path, body in bodies.items():
        run = wrk(
            url + "/push",
            body,
            expect=204,
            duration=args.duration,
            connections=args.connections,
            groups=groups,
        )
        paths[path] = peak_entry(path, run)
    return paths
