"""The nexios chat example: ``python -m examples.chat`` (see docs/chat.md)."""
