"""`/metrics`: Prometheus counters after pushes of each outcome, scraped over HTTP.

The registry lives as long as the test process, so every test compares a scrape taken
before with one taken after its pushes.
"""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from push_relay.backends import Clients
from push_relay.testing.ca import TestCA
from push_relay.testing.fcm_sim import DELIVER, UNAVAILABLE, FcmSimulator, device_token
from push_relay.testing.hms_sim import HmsSimulator
from push_relay.testing.process import GatewayRig
from push_relay.testing.relay import RelayStarter, RunningRelay

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
APP = "104455555"
SECRET = "hms-client-secret-for-metrics"
GW = "threemagateway"


async def scrape(relay: RunningRelay) -> Samples:
    answer = await relay.request("GET", "/metrics")
    assert 200 == answer.status
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def requests(before: Samples, after: Samples, backend: str, outcome: int, reason: str) -> float:
    return delta(
        before,
        after,
        "push_relay_requests_total",
        backend=backend,
        outcome=str(outcome),
        reason=reason,
    )


async def test_every_metric_of_the_contract_is_exposed(relay: RunningRelay) -> None:
    text = (await relay.request("GET", "/metrics")).text
    for name in (
        "push_relay_requests_total",
        "push_relay_upstream_seconds",
        "push_relay_upstream_retries_total",
        "push_relay_in_flight",
        "push_relay_auth_refreshes_total",
        "push_relay_influxdb_queue_depth",
        "push_relay_influxdb_dropped_total",
    ):
        assert f"# HELP {name} " in text


async def test_requests_are_counted_by_backend_outcome_and_reason(
    start_relay: RelayStarter, gateway: GatewayRig
) -> None:
    sim = gateway.simulator
    sim.add_recipient("NOCREDIT")
    sim.add_recipient("BROKEN11")
    sim.script.set("NOCREDIT", 402)
    sim.script.set("BROKEN11", 500)
    async with start_relay(f"[server]\nmax_in_flight = 1\n\n{gateway.section}") as relay:
        before = await scrape(relay)
        for _ in range(3):
            assert 204 == (await relay.push(gateway.push())).status
        assert 502 == (await relay.push(gateway.push(identity="NOCREDIT"))).status
        assert 500 == (await relay.push(gateway.push(identity="BROKEN11"))).status
        assert 400 == (await relay.push({"token": "t", "session": "s", "version": "3"})).status
        sim.delay = 0.3  # timed below: the histogram's sum grows by at least this much
        sim.hold()
        slow = asyncio.create_task(relay.push(gateway.push()))
        await sim.wait_arrived(6)
        assert 503 == (await relay.push(gateway.push())).status
        sim.release()
        assert 204 == (await slow).status
        after = await scrape(relay)

    assert 4 == requests(before, after, GW, 204, "delivered")
    assert 1 == requests(before, after, GW, 502, "no_credits")
    assert 1 == requests(before, after, GW, 500, "unexpected_status")
    assert 1 == requests(before, after, "fcm", 400, "not_configured")
    assert 1 == requests(before, after, GW, 503, "overloaded")
    # only pushes that went to the gateway were timed
    assert 6 == delta(before, after, "push_relay_upstream_seconds_count", backend=GW)
    assert 0.3 <= delta(before, after, "push_relay_upstream_seconds_sum", backend=GW)
    assert 0 == after[("push_relay_in_flight", frozenset())]


async def test_in_flight_gauge_counts_pushes_being_relayed(
    start_relay: RelayStarter, gateway: GatewayRig
) -> None:
    gateway.simulator.hold()
    async with start_relay(gateway.section) as relay:
        pushes = [asyncio.create_task(relay.push(gateway.push())) for _ in range(3)]
        await gateway.simulator.wait_arrived(3)
        during = await scrape(relay)
        gateway.simulator.release()
        await asyncio.gather(*pushes)
        after = await scrape(relay)
    assert 3 == during[("push_relay_in_flight", frozenset())]
    assert 0 == after[("push_relay_in_flight", frozenset())]


async def test_auth_refreshes_are_counted_by_result(
    start_relay: RelayStarter, test_ca: TestCA
) -> None:
    hms = HmsSimulator(test_ca)
    hms.add_app(APP, SECRET)
    await hms.start()
    good = hms.config_toml(APP)
    bad = good.replace(SECRET, "not-the-secret").replace(f"[hms.{APP}]", "[hms.other]")
    form = {"type": "hms", "token": "device", "session": "s", "version": "3"}
    try:
        async with start_relay(good + bad) as relay:
            before = await scrape(relay)
            for _ in range(2):
                assert 204 == (await relay.push({**form, "appid": APP})).status
            assert 500 == (await relay.push({**form, "appid": "other"})).status
            after = await scrape(relay)
    finally:
        await hms.stop()
    refreshes = "push_relay_auth_refreshes_total"
    assert 1 == delta(before, after, refreshes, backend="hms", result="ok")
    assert 1 == delta(before, after, refreshes, backend="hms", result="error")
    assert 1 == requests(before, after, "hms", 500, "auth_failed")
    assert 2 == requests(before, after, "hms", 204, "delivered")


async def test_upstream_retries_are_counted(start_relay: RelayStarter, test_ca: TestCA) -> None:
    fcm = FcmSimulator(test_ca)
    await fcm.start()
    token = device_token("retried")
    fcm.script.set(token, UNAVAILABLE, UNAVAILABLE, DELIVER)
    form = {"type": "fcm", "token": token, "session": "s", "version": "3"}
    try:
        async with start_relay(fcm.config_toml(), Clients(backoff_base=0.001)) as relay:
            before = await scrape(relay)
            assert 204 == (await relay.push(form)).status
            after = await scrape(relay)
    finally:
        await fcm.stop()
    assert 2 == delta(before, after, "push_relay_upstream_retries_total", backend="fcm")
    assert 1 == requests(before, after, "fcm", 204, "delivered")
    assert 1 == delta(before, after, "push_relay_auth_refreshes_total", backend="fcm", result="ok")
    assert 1 == delta(before, after, "push_relay_upstream_seconds_count", backend="fcm")
