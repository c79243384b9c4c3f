"""`dockyard run` on a machine whose shells start with a low open-files limit."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

SHOW_LIMITS = (
    "import resource; from dockyard.cli import _raise_open_files_limit; "
    "_raise_open_files_limit(); print(*resource.getrlimit(resource.RLIMIT_NOFILE))"
)


def test_the_operator_raises_its_open_files_limit_to_the_hard_one() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard limit here ({hard}) leaves nothing to raise")

    def low_soft_limit() -> None:  # a shell's usual 1024, lower still
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    shown = subprocess.run(
        [sys.executable, "-c", SHOW_LIMITS],
        preexec_fn=low_soft_limit,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    soft_after, hard_after = (int(value) for value in shown)
    assert hard_after == hard
    assert soft_after == (hard if hard != resource.RLIM_INFINITY else 1 << 20)
