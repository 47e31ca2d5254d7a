"""The markdown results table and the targets check of a benchmark run."""

from __future__ import annotations

from typing import Any

TARGET_RATE = 8000.0  # relayed pushes/s per worker, on each of the FCM and APNs paths
TARGET_ADDED_P99_MS = 5.0  # at 50 % of peak
TARGET_RSS_MB = 80.0  # per worker
TARGET_LIMITS_RATE = {"memory": 9000.0, "redis": 6000.0}  # per worker, [limits] on


def _yes(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def _cpu(entry: dict[str, Any], *names: str) -> str:
    cpu = entry["cpu_per_1k"]
    return " · ".join(f"{cpu[n]:.3f}" if n in cpu else "-" for n in names)


def _ceilings(results: dict[str, Any]) -> list[str]:
    lines = [
        "## Ceilings of this machine (no relay)",
        "",
        "| what | requests/s | all answered as expected | CPU s per 1k: server · wrk |",
        "|---|---:|---|---|",
    ]
    for c in results["ceilings"]:
        server = "nginx" if "nginx" in c["cpu_per_1k"] else "server"
        lines.append(
            f"| {c['name']} | {c['rate']:,.0f} | {_yes(c['ok'])} | "
            f"{_cpu(c, server, 'load generator')} |"
        )
    return lines


def _peaks(results: dict[str, Any]) -> list[str]:
    s = results["settings"]
    lines = [
        "## Relay peak throughput (closed loop: "
        f"`wrk -t1 -c{s['connections']} -d{s['duration']:g}s`)",
        "",
        "| workers | path | relayed pushes/s | all 204 | CPU s per 1k: relay · nginx · wrk "
        "| upstream connections (per process) | opened during peaks | RSS per worker (MiB) |",
        "|---:|---|---:|---|---|---|---:|---|",
    ]
    for r in results["relay"]:
        held = ", ".join(str(n) for n in r["upstream_connections"].values()) or "0"
        rss = ", ".join(f"{m:.0f}" for m in r["rss_mb"])
        if r["main_rss_mb"] is not None:
            rss += f" (main {r['main_rss_mb']:.0f})"
        for path, p in r["paths"].items():
            lines.append(
                f"| {r['workers']} | {path} | {p['rate']:,.0f} | {_yes(p['ok'])} | "
                f"{_cpu(p, 'relay', 'nginx', 'load generator')} | {held} | "
                f"{r['connections_opened_during_peaks']} | {rss} |"
            )
    return lines


def _latencies(results: dict[str, Any]) -> list[str]:
    fraction = results["settings"]["load_fraction"]
    lines = [
        f"## Latency at {fraction:.0%} of peak (open loop, fixed rate, ms)",
        "",
        "| workers | path | rate/s | relay p50 | relay p99 | nginx direct p50 | direct p99 "
        "| added p50 | added p99 | all answered | relay CPU s per 1k |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results["relay"]:
        for path, p in r["paths"].items():
            lat = p["latency"]
            via, direct = lat["relay"]["latency_ms"], lat["direct"]["latency_ms"]
            added = lat["added_ms"]
            lines.append(
                f"| {r['workers']} | {path} | {lat['rate']:,.0f} | {via['p50']:.2f} | "
                f"{via['p99']:.2f} | {direct['p50']:.2f} | {direct['p99']:.2f} | "
                f"{added['p50']:.2f} | {added['p99']:.2f} | {_yes(lat['ok'])} | "
                f"{lat['relay_cpu_per_1k']:.3f} |"
            )
    return lines


def _limits(results: dict[str, Any]) -> list[str]:
    s = results["settings"]
    lines = [
        "## Relay peak with rate limits on (one worker, nothing refused; "
        f"`wrk -t1 -c{s['connections']} -d{s['duration']:g}s`)",
        "",
        "| limits counted in | path | relayed pushes/s | all 204 "
        "| CPU s per 1k: relay · redis · nginx · wrk | RSS of the worker (MiB) |",
        "|---|---|---:|---|---|---:|",
    ]
    for row in results.get("limits", []):
        for path, p in row["paths"].items():
            lines.append(
                f"| {row['store']} | {path} | {p['rate']:,.0f} | {_yes(p['ok'])} | "
                f"{_cpu(p, 'relay', 'redis', 'nginx', 'load generator')} | "
                f"{row['rss_mb']:.0f} |"
            )
    return lines


def _limits_targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    found = []
    for row in results.get("limits", []):
        target = TARGET_LIMITS_RATE[row["store"]]
        for path, p in row["paths"].items():
            found.append(
                (
                    f"≥ {target:,.0f} pushes/s per worker with limits in {row['store']} ({path})",
                    f"{p['rate']:,.0f}",
                    p["ok"] and p["rate"] >= target,
                )
            )
    return found


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for the one-worker run and the RSS of every run."""
    found: list[tuple[str, str, bool]] = []
    single = [r for r in results["relay"] if r["workers"] == 1]
    for r in single:
        for path, p in r["paths"].items():
            found.append(
                (
                    f"≥ {TARGET_RATE:,.0f} relayed pushes/s per worker ({path})",
                    f"{p['rate']:,.0f}",
                    p["ok"] and p["rate"] >= TARGET_RATE,
                )
            )
        for path, p in r["paths"].items():
            added = p["latency"]["added_ms"]["p99"]
            found.append(
                (
                    f"p99 added latency ≤ {TARGET_ADDED_P99_MS:g} ms at 50 % load ({path})",
                    f"{added:.2f} ms",
                    p["latency"]["ok"] and added <= TARGET_ADDED_P99_MS,
                )
            )
    rss = [m for r in results["relay"] for m in r["rss_mb"]]
    rss += [r["rss_mb"] for r in results.get("limits", [])]
    if rss:
        found.append(
            (
                f"RSS ≤ {TARGET_RSS_MB:g} MiB per worker",
                f"max {max(rss):.0f} MiB",
                max(rss) <= TARGET_RSS_MB,
            )
        )
    return found + _limits_targets(results)


def all_answered(results: dict[str, Any]) -> bool:
    """Every push of every measurement answered as expected (204 from the relay)."""
    peaks = [p["ok"] and p["latency"]["ok"] for r in results["relay"] for p in r["paths"].values()]
    limited = [p["ok"] for r in results.get("limits", []) for p in r["paths"].values()]
    return all(peaks) and all(limited) and all(c["ok"] for c in results["ceilings"])


def render(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [
        "# push-relay benchmark",
        "",
        f"{s['cpus']} CPUs shared by relay, nginx and load generator "
        f"(1-minute load average before the run: {s['loadavg']:.2f}); "
        f"{s['duration']:g} s per measurement; relay log level `{s['relay_log_level']}`; "
        f"total {results.get('seconds', 0):.0f} s.",
        "",
        *_ceilings(results),
        "",
        *_peaks(results),
        "",
        *_latencies(results),
        "",
        *([*_limits(results), ""] if results.get("limits") else []),
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        *(f"| {t} | {m} | {_yes(ok)} |" for t, m, ok in targets(results)),
    ]
    if not results.get("workers_flag", True):
        lines += ["", "`--workers` is not available in this push-relay: one worker only."]
    return "\n".join(lines) + "\n"
