"""`python -m sparseae.cli ...`: the command line, as `python -m sparseae` runs it."""

from sparseae.cli import main

raise SystemExit(main())
