"""``python -m deconvnet_ext`` is the ``deconvnet`` command."""
import sys

from .cli import main

sys.exit(main())
