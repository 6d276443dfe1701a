"""``python -m cxr_models COMMAND``: export | check | train | evaluate (each also runs as its own module)."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "export": "cxr_models.export",
    "check": "cxr_models.contract",
    "train": "cxr_models.train",
    "evaluate": "cxr_models.evaluate",
}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python -m cxr_models {{{'|'.join(COMMANDS)}}} [--help]", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[sys.argv[1]])
    return module.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
