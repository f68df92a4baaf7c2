"""Translators between API dialects: one per front or account kind.

Each is sans-IO, as the reframer is: parsed JSON in, parsed JSON (or bytes) out, no
clock and no randomness of its own (the gateway passes ``created_at`` and an id seed).
"""
