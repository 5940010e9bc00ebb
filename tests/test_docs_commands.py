"""Every ``lotsim`` command line shown in README.md and docs/*.md names real commands and options.

A user copies these lines first; a renamed flag or a deleted recipe would otherwise only show up
as their error. Options are checked against the typer application itself, recipe paths against the
repository, and ``--arms`` against the attention registry and each variant's ablations.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from lotsim.cli import app
from lotsim.train.compare import parse_arms

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _command_lines() -> list[tuple[str, str]]:
    """(document, command line) for every line starting with ``lotsim `` in a fenced block."""
    found = []
    for path in DOCUMENTS:
        for block in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.split(r"\s+#", line)[0].strip()  # drop trailing comments
                if line.startswith("lotsim "):
                    found.append((path.name, " ".join(line.split())))
    return found


COMMANDS = _command_lines()


def test_the_documents_show_commands():
    assert len(COMMANDS) > 40  # README overview, simulate/analyze/train/compare/export examples


@pytest.mark.parametrize(("document", "line"), COMMANDS, ids=[f"{d}:{i}" for i, (d, _) in enumerate(COMMANDS)])
def test_documented_command_is_real(document, line):
    root = typer.main.get_command(app)
    args = shlex.split(line)[1:]
    command = root
    while hasattr(command, "commands") and args and not args[0].startswith("-"):
        names = args.pop(0).split("|")  # the overview writes alternatives as a|b|c
        unknown = [n for n in names if n not in command.commands]
        assert not unknown, f"{document}: {line!r} names unknown command(s) {unknown}"
        command = command.commands[names[0]]
    options = {o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}
    used = [a.split("=")[0] for a in args if a.startswith("-") and a not in ("-", "--")]
    assert not [u for u in used if u not in options], f"{document}: {line!r} uses unknown options"
    for arg in args:
        if arg.startswith("recipes/") and arg.endswith(".toml"):
            assert (ROOT / arg).is_file(), f"{document}: {line!r} names a missing recipe {arg}"
    if "--arms" in args:
        parse_arms(args[args.index("--arms") + 1].replace(",…", ""))  # raises on unknown arms/ablations


@pytest.mark.slow
@pytest.mark.parametrize("heading", ["### Simulate", "### Analyse"])
def test_readme_walkthrough_runs_as_written(heading, tmp_path):
    """The README's simulate and analyse blocks, executed line by line in a fresh folder (~3 min)."""
    import subprocess
    import sys

    block = re.search(re.escape(heading) + r".*?```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    lines = [re.split(r"\s+#", line)[0].strip() for line in block.group(1).replace("\\\n", " ").splitlines()]
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    for line in (x for x in lines if x.startswith("lotsim ")):
        done = subprocess.run([sys.executable, "-m", "lotsim", *shlex.split(line)[1:]], cwd=tmp_path,
                              capture_output=True, text=True)
        assert done.returncode == 0, f"{line!r} failed: {done.stderr.strip()[-500:]}"
