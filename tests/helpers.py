"""Helpers shared by several test modules (fixtures shared by many live in conftest.py)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path

from push_relay.sandbox import SandboxPart, SandboxStarter
from push_relay.testing.ca import TestCA
from push_relay.testing.ports import free_port
from push_relay.testing.relay import Answer, RelayStarter


class FakeClock:
    """Wall-clock time that moves only when a test says so; relay and simulator can share it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    what: str,
    timeout: float = 30.0,  # noqa: ASYNC109 - bounds the polling; the predicate is no coroutine
) -> None:
    """Poll `predicate` until it holds. The timeout is generous on purpose: a busy machine
    makes the event late, never wrong, so only an event that does not come fails the test."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                result = predicate()
                if await result if inspect.isawaitable(result) else result:
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not {what} within {timeout:g} s") from None


def closed_port_url() -> str:
    """An https URL on loopback where nothing listens: every connection is refused."""
    return f"https://127.0.0.1:{free_port()}"


async def answer_sandbox_examples(
    start_relay: RelayStarter, starter: SandboxStarter, ca: TestCA, workdir: Path
) -> tuple[SandboxPart, list[Answer]]:
    """Start one service's sandbox simulator, push its examples through the relay, stop it."""
    part = await starter(ca, workdir)
    try:
        async with start_relay(part.config_toml) as relay:
            answers = [await relay.push(example.body) for example in part.examples]
    finally:
        await part.stop()
    return part, answers
