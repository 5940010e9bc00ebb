"""Shared test helpers.

Fixtures are found by pytest; the plain helpers are imported by the test modules as
``from tests.conftest import invoke`` (the repository root is on ``sys.path``: pytest's
``pythonpath``, or the working directory of a test's subprocess that imports a test module).
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster and immune to a busy machine's other load.

    Use per module with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def invoke(*args):
    """Run ``lotsim ARGS...`` through typer's CliRunner (arguments converted with ``str``)."""
    from typer.testing import CliRunner

    from lotsim.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *needles: str) -> None:
    """A user error: exit code 2 and exactly one stderr line ``error: ...`` containing every needle."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
