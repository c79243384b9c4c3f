"""The planning package stays pure: importing it pulls in no I/O library and not the API."""

from __future__ import annotations

import subprocess
import sys


def test_importing_planning_loads_no_io_library_nor_the_api() -> None:
    probe = (
        "import sys, dockyard.planning\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'docker', 'kopf', 'kubernetes', 'boto3', 'botocore', 'google', 'pydantic'} "
        "or m.startswith('dockyard.') and not m.startswith('dockyard.planning'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""
