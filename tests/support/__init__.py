"""What the tests share, one module for each thing it holds.

``upstream``: the scripted fake upstream (aiohttp, and raw connections for exact bytes);
``builders``: chunks, streams, completions, configs and wire bytes; ``clients``: the real
clients in front of seamline; ``seamline``: seamline started in process; ``logs``: log
capture; ``wire_client``, ``tls``, ``http_proxies``, ``redis_replicas``: the real parts
some tests run against; ``hostile_upstreams``: the corpus of hostile upstreams;
``anthropic_dialect``, ``responses_dialect``: the translators' builders and SDK judges.

Test modules import from here; ``conftest.py`` only registers the fixtures.
"""
