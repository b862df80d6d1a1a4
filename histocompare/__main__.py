"""``python -m histocompare``: the same as the ``histocompare`` command."""

from histocompare.cli import main

raise SystemExit(main())
