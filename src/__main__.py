"""`python -m isdr` is the `isdr` command."""

from isdr.cli import main

raise SystemExit(main())
