#!/usr/bin/env python3
"""Run the `hwnas` command from a checkout without installing it: scripts/hwnas.py --help."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
