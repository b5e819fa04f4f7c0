"""The cases (a)-(f) of tests/test_ha_import.py with Home Assistant's recorder on MariaDB and
on PostgreSQL.

Why: users who outgrow SQLite run HA's recorder on a server, and backdate promises the same
there. A real HA 2024.3.3 is started on an EMPTY database (unique name, dropped afterwards) and
creates its schema itself (`mysql+pymysql://root:@127.0.0.1:3306/<db>?charset=utf8mb4`,
`postgresql://postgres@127.0.0.1:5432/<db>`); backdate is pointed at that same db_url (HA's own
spelling), and every result is judged by HA's `recorder/statistics_during_period`, exactly as
on SQLite.

How: every test and fixture of test_ha_import.py is re-used here unchanged; only the
``ha_engine`` fixture differs (conftest.py gives 'sqlite'; here it is parametrised), so a case
added there runs on all three engines. Module scope keeps one HA per engine for the whole run.
"""

from __future__ import annotations

import pytest
import test_ha_import

pytestmark = [pytest.mark.ha, pytest.mark.servers]

# The tests and the fixtures that start HA, taken over from test_ha_import.py: pytest collects
# them from this module's namespace, so they resolve ``ha_engine`` to the one defined below.
globals().update({
    name: value for name, value in vars(test_ha_import).items()
    if name.startswith("test_") or name in ("ha", "fresh_ha")
})


@pytest.fixture(scope="module", params=["mariadb", "postgresql"])
def ha_engine(request: pytest.FixtureRequest) -> str:
    """HA's recorder on MariaDB 10.11, then on PostgreSQL 15 (tests/services.py starts them)."""
    return str(request.param)
