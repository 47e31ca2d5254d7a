"""Profile the relay's hot path: py-spy samples one worker while wrk drives it at peak.

    uv run --with py-spy python bench/hotpath.py --path fcm --seconds 10

Starts nginx and a one-worker relay like run.py does, runs wrk against it, records the
relay with `py-spy record --format raw` (collapsed stacks; --native to see C frames) and
prints the functions with the largest share of samples: by own time (where the CPU is
spent) and inclusive (which calls lead there). The raw stacks are kept in
bench/results/profile-<path>.txt (open them in speedscope or flamegraph.pl).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import measure
from nginx_upstream import require_tools, start_nginx
from relay_process import relay_config, start_relay
from shapes import write_bodies

from push_relay.testing.ca import TestCA
from push_relay.testing.ports import free_port

HERE = Path(__file__).resolve().parent


# (label, substring of a frame's file) for the own-time split by component; first match wins
COMPONENTS = (
    ("our HTTP/2 client (framing, HPACK via jh2's codec)", ("push_relay/_h2", "push_relay/http2")),
    ("uvicorn (HTTP/1.1 server; includes its socket writes)", ("uvicorn/",)),
    ("logging (one line per push, incl. the token hash)", ("logging/", "push_relay/logs")),
    ("json", ("json/",)),
    ("prometheus_client (metrics)", ("prometheus_client/",)),
    ("ssl", ("ssl.py",)),
    ("asyncio / uvloop", ("asyncio/", "uvloop/")),
    ("jwt / cryptography", ("jwt/", "cryptography/")),
    ("push_relay (our code; includes its socket writes)", ("push_relay/",)),
)


def component(frame: str) -> str:
    for label, markers in COMPONENTS:
        if any(m in frame for m in markers):
            return label
    return "other"


def summarize(stacks: Path, top: int) -> str:
    """Top functions by own and inclusive share of samples, from py-spy's raw output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        frames_text, _, count_text = line.rpartition(" ")
        if not frames_text:
            continue
        count = int(count_text)
        frames = [f for f in frames_text.split(";") if f]
        total += count
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    by_component: Counter[str] = Counter()
    for frame, count in own.items():
        by_component[component(frame)] += count
    lines = [f"{total} samples", "", "own time by component:"]
    for label, count in by_component.most_common():
        lines.append(f"  {count / total:6.1%}  {label}")
    for title, counter in (("own time", own), ("inclusive", inclusive)):
        lines += ["", f"top {top} by {title}:"]
        for frame, count in counter.most_common(top):
            lines.append(f"  {count / total:6.1%}  {frame}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", choices=("fcm", "apns"), default="fcm")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, help="open loop at this rate instead of wrk")
    parser.add_argument("--relay-log-level", default="info")
    parser.add_argument("--native", action="store_true", help="include C frames")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    require_tools("nginx", "wrk")
    py_spy = shutil.which("py-spy") or sys.exit("py-spy missing: uv run --with py-spy ...")
    out = HERE / "results" / f"profile-{args.path}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="push-relay-profile-"))
        stack.callback(shutil.rmtree, workdir, True)
        ca = TestCA.create(workdir)
        nginx = start_nginx(ca, workdir / "nginx")
        stack.callback(nginx.stop)
        bodies = write_bodies(workdir / "bodies.txt", args.path)
        config = workdir / "config.toml"
        config.write_text(relay_config(nginx, workdir, (args.path,)))
        env = os.environ | {"SSL_CERT_FILE": str(ca.ca_file)}
        relay = start_relay(
            config, free_port(), workdir, workers=1, log_level=args.relay_log_level, env=env
        )
        stack.callback(relay.stop)
        url = relay.url + "/push"
        measure.wrk(url, bodies, expect=204, duration=1, connections=8, groups={})
        if args.rate:
            command = measure.fixed_rate_command(
                url, bodies, rate=args.rate, expect=204, duration=args.seconds + 2, cafile=None
            )
        else:
            command = measure.wrk_command(
                url, bodies, expect=204, duration=args.seconds + 2, connections=args.connections
            )
        load = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        stack.callback(load.kill)
        record = [py_spy, "record", "-p", str(relay.process.pid), "-d", f"{args.seconds:g}"]
        record += ["-r", "250", "-f", "raw", "-o", str(out)]
        # native frames need the process paused while its stack is read
        record.append("--native" if args.native else "--nonblocking")
        done = subprocess.run(record, timeout=args.seconds + 30, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"py-spy failed: {done.stderr.strip()}")
        stdout, _ = load.communicate(timeout=30)
    result = measure.parse_result(command, load.returncode, stdout, "")
    if args.rate:
        print(f"fixed rate {args.rate:g}/s: latency {result['latency_ms']}")
    else:
        print(f"wrk: {measure.rate_of(result):,.0f} pushes/s while sampled, result {result}")
    print(summarize(out, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
