"""The proxy itself: the aiohttp app, routes, forwarding, relaying, operations."""
