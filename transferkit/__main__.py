"""`python -m transferkit`: the `transferkit` command (`transferkit.cli`)."""

import sys

from transferkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
