"""``python -m jnmf run guided_nmf``: the ``jnmf`` command."""

import sys

from jnmf.cli import main

sys.exit(main())
