"""``python -m ocifs`` runs the command-line interface."""

from ocifs.cli import main

raise SystemExit(main())
