"""``python -m discomkd_geo`` runs the CLI."""

from .cli import main

main()
