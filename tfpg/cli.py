"""The `tfpg` command (filled in by the CLI issue)."""
import sys


def main(argv=None):
    print("tfpg: the command line is not built yet", file=sys.stderr)
    return 2
