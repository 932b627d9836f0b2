"""`python -m sparseae ...` (and `torchrun -m sparseae ...`): the command line."""

from sparseae.cli import main

raise SystemExit(main())
