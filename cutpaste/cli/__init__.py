"""The ``cutpaste`` command: train, evaluate, predict, export, config and data tools.

Flags override fields of the chosen preset; ``--set key=value`` reaches any other field
(``--set augment.area_ratio=0.02,0.1``). Bad input ends with one line on stderr and exit code 2.
The parser and the entry point are in :mod:`cutpaste.cli.app`, one handler per command in
:mod:`cutpaste.cli.commands`; both import torch only inside a command, so ``--help`` stays fast.
"""

from cutpaste.cli.app import build_parser, main
from cutpaste.cli.commands import build_config

__all__ = ["build_config", "build_parser", "main"]
