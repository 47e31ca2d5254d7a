"""The wake-up payload every backend delivers (`ThreemaPayload` in the original)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from push_relay.request import PushRequest


@dataclass(frozen=True, slots=True)
class ThreemaPayload:
    session: str  # wcs
    affiliation: str | None  # wca, omitted when absent
    timestamp: int  # wct, Unix seconds at sending
    version: int  # wcv

    @classmethod
    def for_push(cls, push: PushRequest, now: float) -> ThreemaPayload:
        return cls(push.session, push.affiliation, int(now), push.version)

    def as_numbers(self) -> dict[str, Any]:
        """APNs, HMS and the gateway carry `wct` and `wcv` as JSON numbers (serialized with
        `backends._json.to_json`)."""
        data: dict[str, Any] = {"wcs": self.session}
        if self.affiliation is not None:
            data["wca"] = self.affiliation
        data["wct"] = self.timestamp
        data["wcv"] = self.version
        return data

    def as_strings(self) -> dict[str, str]:
        """FCM data values must be strings, so `wct` and `wcv` are decimal strings there."""
        data = {"wcs": self.session}
        if self.affiliation is not None:
            data["wca"] = self.affiliation
        data["wct"] = str(self.timestamp)
        data["wcv"] = str(self.version)
        return data
