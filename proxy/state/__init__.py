"""Persistence and sharing: the SQLite store, Redis, the shared pool."""
