"""Run names: a recipe's ``name`` (and a training run's ``output.run``) become one folder or file
name under ``output.dir``, so they must be a single path component.

Used by every recipe model (simulate and train) through :data:`RunName`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def check_run_name(value: str) -> str:
    """Return ``value`` if it is one path component; ValueError (one line) otherwise.

    Refused: empty, ``.``, ``..``, anything holding ``/`` or ``\\``, a NUL character, or a name
    starting with ``~`` (a shell would expand it).
    """
    bad = (not value or value in (".", "..") or any(c in value for c in "/\\\0") or value.startswith("~")
           or value != value.strip())
    if bad:
        raise ValueError(f"name {value!r} must be a single folder name (no '/', '\\', '..', leading '~' "
                         f"or surrounding spaces): runs are written inside output.dir")
    return value


RunName = Annotated[str, AfterValidator(check_run_name)]
