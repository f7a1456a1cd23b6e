"""`python -m nas` runs the `hwnas` command."""

from nas.cli import main

raise SystemExit(main())
