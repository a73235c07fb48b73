"""Run the command line as ``python -m progress_lab``."""

from .cli import main

raise SystemExit(main())
