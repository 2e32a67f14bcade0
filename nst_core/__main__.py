"""``python -m nst_core`` runs the ``nst`` command."""

import sys

from .cli import main

sys.exit(main())
