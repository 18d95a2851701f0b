"""`python -m alignment_dagster.cli`: the same as the `alignment-dagster` command."""

import sys

from alignment_dagster.cli import main

sys.exit(main())
