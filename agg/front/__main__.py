"""``python -m agg.front``: the HTTP front alone."""

from .server import main

raise SystemExit(main())
