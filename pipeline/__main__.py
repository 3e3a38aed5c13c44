"""`python -m pipeline` is the `central-mcp` command."""

from pipeline.cli import main

raise SystemExit(main())
