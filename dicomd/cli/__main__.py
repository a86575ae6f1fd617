"""``python -m dicomd.cli``: the same command as the ``dicomd`` script."""

from dicomd.cli import main

raise SystemExit(main())
