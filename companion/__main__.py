"""``python -m companion``: the same entry point as the ``companion`` console script."""

from companion.cli import main

raise SystemExit(main())
