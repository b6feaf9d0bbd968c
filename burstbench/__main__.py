"""``python -m burstbench`` runs the CLI."""

import sys

from burstbench.cli import main

sys.exit(main())
