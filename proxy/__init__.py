"""Seamline: an OpenAI-compatible reverse proxy that repairs SSE streams."""

__version__ = "0.1.0"
