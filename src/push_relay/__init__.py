"""push-relay: relays Threema Web wake-up pushes to APNs, FCM, HMS and the Threema Gateway."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("push-relay")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
