"""backdate's notion of "now", in one place.

Every rule that depends on the time of day reads this clock: which windows Home Assistant has
not compiled yet (the open window and the future), which days still hold 5-minute rows, and
when HA's next compile runs. Keeping it in one function means a test can run the whole program
as if it were another day (tests/conftest.py, `--time-shift`) without touching the system
clock, and nothing else in the package asks `time.time()` for such a decision.
"""

from __future__ import annotations

import time

_shift = 0.0  # seconds; only tests move it (tests/shifted_backdate.py, tests/conftest.py)


def now() -> float:
    """UTC epoch seconds, as backdate's rules see them."""
    return time.time() + _shift


def shift(seconds: float) -> None:
    """Run as if the clock were `seconds` ahead (negative: behind); for tests only."""
    global _shift
    _shift = float(seconds)
