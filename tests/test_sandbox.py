"""`push-relay sandbox` as a user meets it: run it, paste every printed curl command, stop it.

The printed examples are the seed README's four, with only the tokens and the gateway recipient
key replaced, each answered 204 and delivered; then examples that fail on purpose, each saying
what it shows and the status it gets. Each push service whose simulator exists
(`push_relay/testing/<name>_sim.py`) must appear in the sandbox with an example.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

import push_relay.testing
from push_relay.testing.ports import free_port

SIMULATOR_TYPES = {"fcm": "fcm", "apns": "apns", "hms": "hms", "gateway": "threema-gateway"}
EXAMPLE = re.compile(
    r"^# (?P<comment>.+)\n"
    r'curl -i -X POST -H "Origin: https://localhost" (?P<url>http://\S+/push) \\\n'
    r'  -d "(?P<body>[^"]+)"$',
    re.MULTILINE,
)
FAILURE_STATUS = re.compile(r" answers (?P<status>[0-9]{3})$")
BANNER_END = "Stop with Ctrl-C."
# the seed README's examples, as users copy them
SEED_EXAMPLES = [
    "type=apns&token=asdf&session=123deadbeef&version=3&bundleid=com.example.app&endpoint=s",
    "type=fcm&token=asdf&session=123deadbeef&version=3",
    "type=hms&appid=123456&token=asdf&session=123deadbeef&version=3",
    "type=threema-gateway&session=123deadbeef&version=3&identity=ECHOECHO"
    "&public_key=0000000000000000000000000000000000000000000000000000000000000000",
]
REPLACED = {"token", "public_key"}  # the values the sandbox's simulators must choose


def without_tokens(body: str) -> list[tuple[str, str]]:
    """The form's pairs in order, with the values the sandbox replaces blanked out."""
    pairs = [pair.partition("=")[::2] for pair in body.split("&")]
    return [(key, "…" if key in REPLACED else value) for key, value in pairs]


def printed_status(comment: str) -> int:
    """The status an example says it gets: `# <service>: <what it shows> answers 400`, or 204
    for the examples under "each answers 204"."""
    match = FAILURE_STATUS.search(comment)
    return int(match["status"]) if match else 204


RATE_LIMIT_LOOP = re.compile(
    r"^for i in [\d ]+; do curl .*?; echo; done$", re.MULTILINE | re.DOTALL
)


def simulated_types() -> set[str]:
    """The push types that have a simulator module today."""
    directory = Path(push_relay.testing.__file__).parent
    names = {path.stem.removesuffix("_sim") for path in directory.glob("*_sim.py")}
    unknown = names - SIMULATOR_TYPES.keys()
    assert not unknown, f"simulator modules without a known push type: {unknown}"
    return {SIMULATOR_TYPES[name] for name in names}


async def start_sandbox(listen: str) -> asyncio.subprocess.Process:
    """`push-relay sandbox -l LISTEN` as a child process, its stdout and stderr piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "push_relay",
        "sandbox",
        "-l",
        listen,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def read_banner(stdout: asyncio.StreamReader) -> str:
    lines = []
    async with asyncio.timeout(30):
        while BANNER_END not in lines[-1:]:
            line = await stdout.readline()
            if not line:
                raise AssertionError("the sandbox exited before printing its examples")
            lines.append(line.decode().rstrip("\n"))
    return "\n".join(lines)


async def collect(stream: asyncio.StreamReader, into: list[str]) -> None:
    async for line in stream:
        into.append(line.decode().rstrip("\n"))


async def test_every_printed_example_gets_its_status_and_the_first_are_the_seeds() -> None:
    address = f"127.0.0.1:{free_port()}"
    process = await start_sandbox(address)
    assert process.stdout is not None and process.stderr is not None
    log_lines: list[str] = []
    log_reader = asyncio.create_task(collect(process.stderr, log_lines))
    try:
        banner = await read_banner(process.stdout)
        examples = [
            (m["url"], m["body"], printed_status(m["comment"])) for m in EXAMPLE.finditer(banner)
        ]

        assert f"listening on http://{address}" in banner
        assert {f"http://{address}/push"} == {url for url, _, _ in examples}
        assert [without_tokens(seed) for seed in SEED_EXAMPLES] == [
            without_tokens(body) for _, body, _ in examples[:4]
        ]
        assert [204, 204, 204, 204, 400] == [status for _, _, status in examples[:5]], banner
        types = {
            dict(pair.split("=", 1) for pair in body.split("&"))["type"] for _, body, _ in examples
        }
        assert simulated_types() <= types, banner
        statuses: list[int] = []
        async with aiohttp.ClientSession() as session:
            for url, body, _ in examples:
                async with session.post(
                    url,
                    data=body,
                    headers={
                        "Content-Type": "application/x-www-form-urlencoded",  # what curl -d sends
                        "Origin": "https://localhost",
                    },
                ) as response:
                    statuses.append(response.status)
        assert [status for _, _, status in examples] == statuses, examples

        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            await process.wait()
            await log_reader
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log_reader.cancel()

    assert process.returncode == 0, "\n".join(log_lines)
    assert not [line for line in log_lines if "Traceback" in line or " ERROR " in line]
    deliveries = [line for line in log_lines if " push_relay.sandbox: " in line]
    assert statuses.count(204) == len(deliveries), "\n".join(log_lines)
    assert all("123deadbeef" in line for line in deliveries)


def test_without_the_sandbox_extra_it_says_what_to_install() -> None:
    """A production install has no simulators (no `h2`): one line naming the extra, exit 2."""
    blocked = "import sys; sys.modules['h2'] = None; from push_relay.cli import main; "
    done = subprocess.run(
        [sys.executable, "-c", blocked + "sys.exit(main(['sandbox', '-l', '127.0.0.1:1']))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 2 == done.returncode
    assert "" == done.stdout
    assert [
        "push-relay sandbox: the simulators need h2, which is not installed: "
        "pip install 'push-relay[sandbox]'"
    ] == done.stderr.splitlines()


async def test_the_rate_limit_example_ends_with_a_429() -> None:
    """The printed loop, pasted into a shell as it is: its last push is refused; its device
    is not an example's, so every example is still delivered right after it."""
    if shutil.which("curl") is None:
        raise AssertionError("curl is not installed: apt-get install curl")
    process = await start_sandbox(f"127.0.0.1:{free_port()}")
    assert process.stdout is not None
    try:
        banner = await read_banner(process.stdout)
        [loop] = RATE_LIMIT_LOOP.findall(banner)
        shell = await asyncio.create_subprocess_exec(
            "bash", "-c", loop, stdout=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(30):
            output, _ = await shell.communicate()
        after: list[int] = []
        async with aiohttp.ClientSession() as session:
            for match in EXAMPLE.finditer(banner):
                if printed_status(match["comment"]) == 204:
                    form = {"content-type": "application/x-www-form-urlencoded"}
                    async with session.post(match["url"], data=match["body"], headers=form) as r:
                        after.append(r.status)
    finally:
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            await process.wait()
    responses = output.decode().split("HTTP/1.1 ")[1:]
    assert 6 == len(responses)
    assert responses[0].startswith("204 ")
    last = responses[-1]
    assert last.startswith("429 ")
    assert "retry-after: " in last.lower()
    assert last.rstrip().endswith("Too many requests")
    assert "# Rate limit" in banner
    assert [204, 204, 204, 204] == after


@pytest.mark.parametrize("listen", ["127.0.0.1", "127.0.0.1:99999"])
async def test_bad_listen_address_is_a_clear_error(listen: str) -> None:
    process = await start_sandbox(listen)
    async with asyncio.timeout(30):
        stdout, stderr = await process.communicate()
    assert process.returncode == 2
    assert stdout == b""
    assert [f"push-relay: invalid listen address {listen!r}"] == [
        line.split(": expected")[0] for line in stderr.decode().splitlines()
    ]


async def test_address_in_use_is_a_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        process = await start_sandbox(address)
        async with asyncio.timeout(30):
            stdout, stderr = await process.communicate()
    assert process.returncode == 1
    assert stdout == b""
    [line] = stderr.decode().splitlines()
    assert line.startswith(f"push-relay sandbox: cannot listen on {address}: ")
