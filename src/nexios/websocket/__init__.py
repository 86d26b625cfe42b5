"""``nexios.websocket``: the singular spelling some seeds import from.

It is the same package as :mod:`nexios.websockets` under another name.
"""

from __future__ import annotations

from nexios.websockets import *  # noqa: F403
from nexios.websockets import __all__ as __all__
