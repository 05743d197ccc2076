"""`python -m extproc` runs the `cascade` command line."""

from extproc.cli import main

raise SystemExit(main())
