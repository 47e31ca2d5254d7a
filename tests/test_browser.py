"""A real headless Chromium calls the relay the way Threema Web does, from another origin.

The page is served from `http://localhost:<port>`, the relay listens on
`http://127.0.0.1:<port>`: different origins, so the browser enforces CORS exactly as it does
for Threema Web, and the page can read `response.status` only when the relay allows it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from push_relay.testing.process import GatewayRig
from push_relay.testing.relay import RelayStarter, RunningRelay

pytestmark = pytest.mark.browser


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# The wake-up call as Threema Web makes it: a form-encoded fetch whose status it reads.
PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>wake-up</title></head>
<body><script>
async function wakeUp(url, params) {
  try {
    const response = await fetch(url, {
      method: 'POST',
      headers: {'Content-Type': 'application/x-www-form-urlencoded'},
      body: new URLSearchParams(params),
    });
    return {status: response.status, body: await response.text()};
  } catch (error) {
    return {error: error.name, message: error.message};
  }
}
// A plain HTML form POST: a navigation, so no CORS preflight and no CORS check at all.
function postForm(url, params, done) {
  const frame = document.createElement('iframe');
  frame.name = 'target-' + Math.random();
  frame.onload = () => done('loaded');
  document.body.appendChild(frame);
  const form = document.createElement('form');
  form.method = 'POST';
  form.action = url;
  form.target = frame.name;
  for (const [name, value] of Object.entries(params)) {
    const input = document.createElement('input');
    input.type = 'hidden';
    input.name = name;
    input.value = value;
    form.appendChild(input);
  }
  document.body.appendChild(form);
  form.submit();
}
</script></body></html>
"""
CALL_WAKE_UP = (
    "const done = arguments[arguments.length - 1];\nwakeUp(arguments[0], arguments[1]).then(done);"
)
CALL_POST_FORM = "postForm(arguments[0], arguments[1], arguments[arguments.length - 1]);"


# -- the browser and the page ----------------------------------------------------------------


class PageHandler(BaseHTTPRequestHandler):
    """Serves the page that calls the relay as Threema Web does."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    """The Threema Web stand-in, on a loopback origin that is not the relay's."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), PageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def browser(page_origin: str) -> Iterator[webdriver.Chrome]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: install the Debian packages chromium and "
            "chromium-driver (`make deps` installs them)",
            pytrace=False,
        )
    profile = tempfile.mkdtemp(prefix="push-relay-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    # an explicit driver path and browser binary: Selenium Manager downloads nothing
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_script_timeout(30)
        driver.get(page_origin + "/")
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


async def wake_up(browser: webdriver.Chrome, relay: RunningRelay, params: dict[str, str]) -> Any:
    """Run the page's `wakeUp` against the relay; Selenium blocks, so not in the event loop."""
    return await asyncio.to_thread(
        browser.execute_async_script, CALL_WAKE_UP, relay.url + "/push", params
    )


# -- the tests -------------------------------------------------------------------------------


async def test_bad_request_reads_400_in_the_browser(
    browser: webdriver.Chrome, start_relay: RelayStarter
) -> None:
    async with start_relay() as relay:
        result = await wake_up(browser, relay, {"type": "fcm", "token": "t", "session": "s"})
    assert result == {"status": 400, "body": "Missing parameters"}


async def test_gateway_push_reads_204_in_the_browser(
    browser: webdriver.Chrome, start_relay: RelayStarter, gateway: GatewayRig
) -> None:
    async with start_relay(gateway.section) as relay:
        result = await wake_up(browser, relay, gateway.push(session="browser-session"))
    assert result == {"status": 204, "body": ""}
    [delivery] = gateway.simulator.deliveries
    assert (
        delivery.recipient,
        delivery.payload["wcs"],
        delivery.payload["wcv"],
    ) == ("ECHOECHO", "browser-session", 3)


async def test_allow_list_with_the_page_origin_lets_the_page_read_the_status(
    browser: webdriver.Chrome, start_relay: RelayStarter, gateway: GatewayRig, page_origin: str
) -> None:
    toml = f'[server]\ncors_origins = ["https://web.threema.ch", "{page_origin}"]\n'
    async with start_relay(toml + gateway.section) as relay:
        result = await wake_up(browser, relay, gateway.push())
    assert result == {"status": 204, "body": ""}


async def post_form(browser: webdriver.Chrome, relay: RunningRelay, params: dict[str, str]) -> Any:
    """Submit the page's form POST to the relay and wait until its answer has loaded."""
    return await asyncio.to_thread(
        browser.execute_async_script, CALL_POST_FORM, relay.url + "/push", params
    )


async def test_allow_list_without_the_page_origin_refuses_the_push(
    browser: webdriver.Chrome, start_relay: RelayStarter, gateway: GatewayRig
) -> None:
    """The push is a CORS 'simple request' (no preflight), so only the relay can stop it: it
    answers 403 and sends nothing; the browser hides even that answer from the page."""
    toml = '[server]\ncors_origins = ["https://web.threema.ch"]\n'
    async with start_relay(toml + gateway.section) as relay:
        result = await wake_up(browser, relay, gateway.push())
    assert result["error"] == "TypeError"  # rejected once the answer came: nothing pending
    assert "status" not in result
    assert [] == gateway.simulator.deliveries


@pytest.mark.parametrize("allowed", [False, True], ids=["foreign-origin", "allowed-origin"])
async def test_form_post_from_a_foreign_origin_sends_nothing(
    browser: webdriver.Chrome,
    start_relay: RelayStarter,
    gateway: GatewayRig,
    page_origin: str,
    allowed: bool,
) -> None:
    """A form POST needs no preflight and gets no CORS check: the relay's Origin check is all
    that stands between a foreign page and a push from its visitors' browsers."""
    origins = '"https://web.threema.ch"' + (f', "{page_origin}"' if allowed else "")
    async with start_relay(f"[server]\ncors_origins = [{origins}]\n" + gateway.section) as relay:
        assert "loaded" == await post_form(browser, relay, gateway.push(session="form"))
    delivered = [d.payload["wcs"] for d in gateway.simulator.deliveries]
    assert (["form"] if allowed else []) == delivered


async def test_every_simulated_service_reads_204_in_the_browser(
    browser: webdriver.Chrome, relay_with_services: tuple[RunningRelay, list[dict[str, str]]]
) -> None:
    """The sandbox's example for each push service, sent by the browser as Threema Web would."""
    relay, examples = relay_with_services
    results = [await wake_up(browser, relay, params) for params in examples]
    assert examples
    assert [{"status": 204, "body": ""}] * len(examples) == results
