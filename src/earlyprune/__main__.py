"""``python -m earlyprune``: the same command line as the ``earlyprune`` script."""

from .cli import main

raise SystemExit(main())
