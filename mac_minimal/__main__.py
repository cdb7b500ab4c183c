"""``python -m mac_minimal``: the trainer's command line (:func:`mac_minimal.cli.main`; ``--help`` lists the flags)."""

import sys

from mac_minimal.cli import main

sys.exit(main())
