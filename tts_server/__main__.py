"""``python -m tts_server``: same as the ``tts-server`` command."""

import sys

from .cli import main

sys.exit(main())
