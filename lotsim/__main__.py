"""``python -m lotsim`` runs the CLI."""

from lotsim.cli import app

app()
