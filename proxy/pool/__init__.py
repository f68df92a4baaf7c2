"""The account pool and the failover policy: pure, with an injected clock."""
