"""Translators between the API dialects: sans-IO state machines fed chunks, giving events."""
