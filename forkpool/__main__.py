"""``python -m forkpool``: the same as the ``forkpool`` command."""

from forkpool._cli import main

raise SystemExit(main())
