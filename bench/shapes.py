"""The request shapes the benchmark sends: what Threema Web posts to `/push`.

Bodies are generated once per run with a fixed seed and written one per line, so that the
wrk Lua script and the Python load generator send exactly the same requests.
"""

from __future__ import annotations

import random
import string
from pathlib import Path
from urllib.parse import urlencode

FORM = "application/x-www-form-urlencoded"
FCM_SEND_PATH = "/v1/projects/bench/messages:send"
APNS_DEVICE_PATH = "/3/device/"
APNS_BUNDLE_ID = "ch.threema.iapp"
_B64URL = string.ascii_letters + string.digits + "-_"


def fcm_token(rng: random.Random) -> str:
    """An FCM registration token as devices report them: 11 chars, `:APA91b`, 134 chars."""
    instance = "".join(rng.choices(_B64URL, k=11))
    return f"{instance}:APA91b" + "".join(rng.choices(_B64URL, k=134))


def apns_token(rng: random.Random) -> str:
    """An APNs device token: 32 bytes as 64 lower-case hex characters."""
    return rng.randbytes(32).hex()


def session(rng: random.Random) -> str:
    """A Threema Web session: the SHA-256 of the initiator's key, 64 hex characters."""
    return rng.randbytes(32).hex()


def fcm_body(rng: random.Random) -> str:
    params = {"type": "fcm", "token": fcm_token(rng), "session": session(rng), "version": "5"}
    if rng.random() < 0.5:  # Threema Web sends an affiliation for consecutive pushes
        params["affiliation"] = rng.randbytes(8).hex()
    return urlencode(params)  # a browser's form encoding: the token's `:` becomes %3A


def apns_body(rng: random.Random) -> str:
    params = {
        "type": "apns",
        "token": apns_token(rng),
        "session": session(rng),
        "version": "5",
        "bundleid": APNS_BUNDLE_ID,
        "endpoint": "p",
    }
    if rng.random() < 0.5:
        params["affiliation"] = rng.randbytes(8).hex()
    return urlencode(params)


def write_bodies(path: Path, kind: str, count: int = 1000, seed: int = 8) -> Path:
    """`count` distinct request bodies of `kind` (fcm or apns), one per line."""
    rng = random.Random(seed)
    make = {"fcm": fcm_body, "apns": apns_body}[kind]
    path.write_text("".join(make(rng) + "\n" for _ in range(count)))
    return path
