"""``python -m agents`` is the same as the ``flopwatch-agent`` console script."""

from agents.cli import main

raise SystemExit(main())
