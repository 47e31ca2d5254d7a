"""`push-relay sandbox`: the relay against simulated push services, ready to try with curl.

Every simulator that exists contributes a config fragment (with credentials generated for
this run) and example requests; the relay then runs on the usual address with that config.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from push_relay import config
from push_relay.app import PushRelayApp
from push_relay.server import serve_async
from push_relay.testing.ca import TestCA

log = logging.getLogger("push_relay.sandbox")

# generous enough for trying every example by hand, small enough to show a 429 in six pushes
PER_MINUTE = 12
BURST = 5
LIMITS = f"[limits] token_per_minute = {PER_MINUTE}, token_burst = {BURST}"
LIMITS_TOML = f"[limits]\ntoken_per_minute = {PER_MINUTE}\ntoken_burst = {BURST}\n"


@dataclass(frozen=True, slots=True)
class Example:
    """A request the sandbox prints: a form body for `curl -d` and the status it is answered.

    Examples answered 204 are printed first, as the seed README's examples; the others show a
    failure and say what it shows.
    """

    body: str
    status: int = 204
    shows: str = ""  # for a failure: what it demonstrates, printed above the command


@dataclass(frozen=True, slots=True)
class SandboxPart:
    """What one simulated push service adds to the sandbox."""

    name: str
    config_toml: str
    examples: list[Example]
    stop: Callable[[], Awaitable[None]]
    # the rate-limit demonstration's push: a device of its own, so that the examples above
    # are still delivered right after it
    rate_limit_body: str | None = None

    @property
    def delivered(self) -> list[str]:
        """The bodies of the examples that are delivered (answered 204)."""
        return [example.body for example in self.examples if example.status == 204]


SandboxStarter = Callable[[TestCA, Path], Awaitable[SandboxPart]]


def starters() -> list[SandboxStarter]:
    """The simulators the sandbox runs, one per push service that has one, in the order of
    the seed README's examples."""
    from push_relay.testing import apns_sim, fcm_sim, gateway_sim, hms_sim

    return [
        apns_sim.sandbox_part,
        fcm_sim.sandbox_part,
        hms_sim.sandbox_part,
        gateway_sim.sandbox_part,
    ]


def curl_command(address: str, body: str) -> str:
    return f'curl -i -X POST -H "Origin: https://localhost" http://{address}/push \\\n  -d "{body}"'


async def run(host: str, port: int, stop: asyncio.Event | None = None) -> None:
    """Start simulators and the relay; serve until `stop` is set (or SIGINT/SIGTERM)."""
    _check_free(host, port)
    workdir = Path(tempfile.mkdtemp(prefix="push-relay-sandbox-"))
    stop = stop or asyncio.Event()
    parts: list[SandboxPart] = []
    server = None
    try:
        ca = TestCA.create(workdir)
        os.environ["SSL_CERT_FILE"] = str(ca.ca_file)  # the relay trusts the simulators
        for start in starters():
            parts.append(await start(ca, workdir))
        config_file = workdir / "config.toml"
        config_file.write_text("\n".join([*(p.config_toml for p in parts), LIMITS_TOML]))
        cfg = config.load(config_file)
        server = await serve_async(PushRelayApp(cfg), host, port)
        address = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        print(banner(address, parts, config_file), flush=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        if server is not None:
            server.should_exit = True
            if server.task is not None:
                await server.task
        for part in parts:
            await part.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def banner(address: str, parts: list[SandboxPart], config_file: Path) -> str:
    lines = [
        "",
        f"push-relay sandbox: listening on http://{address}, every push service simulated.",
        f"Generated config: {config_file}",
        "Try these (each answers 204 No Content); deliveries are logged below:",
        "",
    ]
    examples = [(part, example) for part in parts for example in part.examples]
    for part, example in examples:
        if example.status == 204:
            lines += [f"# {part.name}", curl_command(address, example.body), ""]
    failures = [(part, example) for part, example in examples if example.status != 204]
    if failures:
        lines += ["And these fail on purpose, to show how a refused push is answered:", ""]
    for part, example in failures:
        comment = f"# {part.name}: {example.shows} answers {example.status}"
        lines += [comment, curl_command(address, example.body), ""]
    if not parts:
        lines.append("(no simulated backends available)")
    else:
        part = parts[0]
        lines += rate_limit_example(address, part.rate_limit_body or part.examples[0].body)
    lines.append("Stop with Ctrl-C.")
    return "\n".join(lines)


def rate_limit_example(address: str, body: str) -> list[str]:
    """One device pushed once more than its burst: the last is answered 429."""
    count = BURST + 1
    loop = " ".join(str(i) for i in range(1, count + 1))
    return [
        f"# Rate limit ({LIMITS}): one device, {count} times in a row;",
        f"# at most {BURST} are delivered at once, so the last is answered 429 Too many requests "
        "with Retry-After (seconds)",
        f"for i in {loop}; do {curl_command(address, body)}; echo; done",
        "",
    ]


def _check_free(host: str, port: int) -> None:
    """Raise OSError when the address cannot be bound: uvicorn would answer a taken port with
    `sys.exit()` from inside the event loop, with a traceback and without cleaning up."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socket.create_server((host, port), family=family).close()


def run_sandbox(host: str, port: int) -> int:
    import uvloop

    try:
        starters()
    except ModuleNotFoundError as err:  # a production install, without the `sandbox` extra
        package = (err.name or "h2").partition(".")[0]
        print(
            f"push-relay sandbox: the simulators need {package}, which is not installed: "
            "pip install 'push-relay[sandbox]'",
            file=sys.stderr,
        )
        return 2
    try:
        uvloop.run(run(host, port))
    except OSError as err:
        message = f"push-relay sandbox: cannot listen on {host}:{port}: {err.strerror or err}"
        print(message, file=sys.stderr)
        return 1
    return 0
