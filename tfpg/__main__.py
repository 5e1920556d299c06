"""`python -m tfpg`: the `tfpg` command."""

import sys

from tfpg.run.cli import main

if __name__ == "__main__":
    sys.exit(main())
