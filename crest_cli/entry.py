"""The installed `crest` script: the command line, or one line saying which extra it needs.

The base install of the crest package is the thin client (grpcio, protobuf, numpy); the command
line imports the datastore's dependencies, so on a thin install it says how to get them instead
of printing a traceback.
"""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from crest_cli.main import main as run
    except ModuleNotFoundError as exc:
        print(
            f"crest: error: the command line needs {exc.name}, which this install lacks (the base install is "
            "the thin client): pip install 'crest[datastore]' to build and serve stores, 'crest[decoder]' "
            "to generate",
            file=sys.stderr,
        )
        return 1
    return run()
