"""The relay's errors, one tree, with the HTTP status each one answers in one place.

RelayError
├── ConfigError        start-up: names the file and key; the CLI exits 2
├── InvalidRequest     a /push request failed validation: 400 with a plain-text body
└── PushFailed         a valid push could not be delivered: `Push not successful`
                       with the status of its `FailureKind`
"""

from __future__ import annotations

import enum
from typing import ClassVar


class RelayError(Exception):
    """Base of every error the relay raises on purpose."""


class ConfigError(RelayError):
    """The configuration cannot be used; the message names the file and key."""

    def __init__(self, path: str, message: str, key: str | None = None) -> None:
        self.path = path
        self.key = key
        self.message = message
        where = f"{path}: [{key}]" if key else path
        super().__init__(f"{where}: {message}")


class InvalidRequest(RelayError):
    """A push request was refused before anything was sent; `body` is the answer's text."""

    MISSING = "Missing parameters"
    INVALID = "Invalid parameters"
    status: ClassVar[int] = 400  # every validation failure

    def __init__(self, body: str) -> None:
        self.body = body
        super().__init__(body)


class FailureKind(enum.Enum):
    """Whose fault a failed push is; the value is the HTTP status answered."""

    CLIENT = 400  # bad or expired token, backend not configured, request could not be sent
    INTERNAL = 500  # the relay itself failed: auth, unexpected upstream answer
    UPSTREAM = 502  # the push service failed or refused for a reason that is not the client's

    @property
    def status(self) -> int:
        return self.value


class PushFailed(RelayError):
    """A validated push was not delivered.

    `reason` is a short, low-cardinality word for metrics and logs (e.g. `bad_token`,
    `upstream_unavailable`); `detail` is free text for the log line; `upstream_status`
    is the push service's HTTP status when there was one.
    """

    def __init__(
        self,
        kind: FailureKind,
        reason: str,
        detail: str = "",
        *,
        upstream_status: int | None = None,
    ) -> None:
        self.kind = kind
        self.reason = reason
        self.detail = detail
        self.upstream_status = upstream_status
        super().__init__(f"{kind.name.lower()} failure ({reason}): {detail}")

    @property
    def status(self) -> int:
        return self.kind.status
