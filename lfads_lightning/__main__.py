"""`python -m lfads_lightning ...` = `lfads ...` (what launchers run, independent of PATH)."""

from __future__ import annotations

import sys

from lfads_lightning.cli import main

sys.exit(main())
