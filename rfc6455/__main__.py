"""``python -m rfc6455 URI``: the console client (``rfc6455.aio.console``)."""

from __future__ import annotations

import sys

from .aio.console import main

sys.exit(main())
