"""``python -m agg.tools.bench`` is ``agg-bench``."""

from . import main

raise SystemExit(main())
