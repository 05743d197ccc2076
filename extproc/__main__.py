"""`python -m extproc` runs the `cascade` command line."""

from extproc.cli.main import main

raise SystemExit(main())
