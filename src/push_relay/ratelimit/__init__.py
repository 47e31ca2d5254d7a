"""Rate limits per device target and per client address (`[limits]`, contract §12).

`RateLimiter` (in `_limiter`) is what the push path asks; it resolves the client address
(`_clients`), and asks a store: in-process (`_memory`, the default) or Redis (`_redis`, shared
by every worker and instance). Both stores run the same GCRA (`_gcra`) on keyed hashes.
"""

from push_relay.ratelimit._gcra import ADMITTED, Rule, Verdict
from push_relay.ratelimit._limiter import RateLimiter, build_limiter

__all__ = ["ADMITTED", "RateLimiter", "Rule", "Verdict", "build_limiter"]
