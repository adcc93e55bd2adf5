"""``python -m dsel_assets.app.cli``: the ``dsel`` command."""

import sys

from dsel_assets.app.cli import main

sys.exit(main())
