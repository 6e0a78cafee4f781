"""``python -m ocifs`` runs the command-line interface."""

from ocifs.commands.cli import main

raise SystemExit(main())
