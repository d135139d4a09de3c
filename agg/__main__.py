"""``python -m agg`` is the ``agg`` command."""

from .cli import main

raise SystemExit(main())
