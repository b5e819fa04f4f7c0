"""`backdate` on the tests' clock: the command line, with backdate.clock moved by the time shift
that `pytest --time-shift` put into the environment (datagen.SHIFT_ENV).

Test code only: the suite's database tests run the CLI through this file when a shift is set,
so that backdate and the data the tests made agree on "now" on any day. backdate itself has no
such switch.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import datagen  # noqa: E402

from backdate import clock  # noqa: E402
from backdate.cli import main  # noqa: E402

if __name__ == "__main__":
    clock.shift(datagen.time_shift())
    sys.argv[0] = "backdate"
    main()
