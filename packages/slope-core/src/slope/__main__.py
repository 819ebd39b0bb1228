"""`python -m slope`: the command line."""

from .cli import main

raise SystemExit(main())
