"""``python -m server.client URL``: the chat console (``server.client.cli``)."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
