"""Calling one account: the HTTP/1.1 client, the call, OAuth, egress proxies."""
