"""The sans-IO core: bytes and dicts in, bytes and dicts out; standard library only."""
