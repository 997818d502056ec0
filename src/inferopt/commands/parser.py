"""The CLI's argument parser: argparse, with a usage mistake reported as one line.

argparse answers a bad flag with its whole usage block (20 lines for `inferopt bench`) before
the line that says what is wrong; the CLI's rule for bad input is one line on stderr and exit
code 2, the same as for the errors the commands raise themselves.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

EXIT_USAGE = 2  # what argparse and the commands exit with on bad input


class Parser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose usage errors are one line: `PROG: error: MESSAGE (see
    PROG --help)`, exit code 2. Subcommand parsers made by `add_subparsers` share the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
