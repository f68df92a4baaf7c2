"""proxy.config.egress: proxy URLs, NO_PROXY and the environment, without any I/O."""

from __future__ import annotations

import base64

import pytest

from proxy.config.egress import (
    DIRECT,
    EnvProxies,
    ProxyURL,
    describe,
    from_env,
    parse_no_proxy,
    parse_proxy,
    route,
)


@pytest.mark.parametrize(
    ("text", "host", "port", "user", "password"),
    [
        ("http://proxy.corp:3128", "proxy.corp", 3128, "", ""),
        ("http://proxy.corp:3128/", "proxy.corp", 3128, "", ""),
        ("HTTP://Proxy.Corp:3128", "proxy.corp", 3128, "", ""),
        ("http://user:pa%40ss%3Aw@10.0.0.1:8080", "10.0.0.1", 8080, "user", "pa@ss:w"),
        ("http://only-user@[::1]:3128", "::1", 3128, "only-user", ""),
        ("  http://proxy:1  ", "proxy", 1, "", ""),
    ],
)
def test_a_proxy_url_is_read_with_its_credentials_decoded(
    text: str, host: str, port: int, user: str, password: str
) -> None:
    proxy = parse_proxy(text)
    assert (proxy.host, proxy.port, proxy.username, proxy.password) == (host, port, user, password)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("socks5://user:s3cret-pw@proxy:1080", "socks5:// proxies are not supported"),
        ("https://user:s3cret-pw@proxy:443", "https:// proxies are not supported"),
        ("ftp://proxy:21", "got a ftp URL"),
        ("proxy.corp:3128", "got no scheme"),
        ("http://user:s3cret-pw@proxy.corp", "port is missing"),
        ("http://proxy:0", "got port 0"),
        ("http://proxy:99999", "invalid port"),
        ("http://:3128", "got no host"),
        ("http://proxy:3128/some/path", "a path, query or fragment"),
        ("http://proxy:3128?x=1", "a path, query or fragment"),
        ("http://user:s3cret-pw@proxy:31 28", "spaces or control characters"),
        ("http://prox\ty:3128", "spaces or control characters"),
    ],
)
def test_a_bad_proxy_url_is_refused_without_quoting_its_password(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        parse_proxy(text)
    assert "s3cret" not in str(caught.value)


def test_the_environment_may_leave_out_the_scheme() -> None:
    assert parse_proxy("proxy.corp:3128", schemeless=True) == ProxyURL("proxy.corp", 3128)


def test_a_proxy_is_shown_without_its_credentials_and_sends_them_as_basic() -> None:
    proxy = parse_proxy("http://user:s3cret@[::1]:3128")
    for shown in (str(proxy), repr(proxy), proxy.label):
        assert "s3cret" not in shown
    assert str(proxy) == "http://[::1]:3128"
    assert proxy.label == "[::1]:3128"
    assert proxy.authorization == "Basic " + base64.b64encode(b"user:s3cret").decode()
    assert set(proxy.secrets()) == {"s3cret", base64.b64encode(b"user:s3cret").decode()}
    assert ProxyURL("h", 1).authorization == ""
    assert ProxyURL("h", 1).secrets() == []


def test_two_proxies_differ_by_their_credentials_as_pool_keys() -> None:
    a, b = ProxyURL("h", 1, "u", "one"), ProxyURL("h", 1, "u", "two")
    assert a != b
    assert len({a, b, ProxyURL("h", 1, "u", "one")}) == 2


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "direct"),
    [
        ("*", "anything.example", 443, True),
        ("example.com", "example.com", 443, True),
        ("example.com", "api.example.com", 443, True),
        ("example.com", "notexample.com", 443, False),
        (".example.com", "example.com", 443, True),
        (".example.com", "a.b.example.com", 443, True),
        ("*.example.com", "api.example.com", 443, True),
        ("EXAMPLE.com", "Api.Example.COM.", 443, True),
        ("example.com:8443", "example.com", 8443, True),
        ("example.com:8443", "example.com", 443, False),
        ("10.0.0.0/8", "10.1.2.3", 80, True),
        ("10.0.0.0/8", "11.1.2.3", 80, False),
        ("10.0.0.0/8", "10.example", 80, False),
        ("127.0.0.1", "127.0.0.1", 80, True),
        ("127.0.0.1:8080", "127.0.0.1", 80, False),
        ("::1", "::1", 80, True),
        ("[::1]", "[::1]", 80, True),
        ("[::1]:8080", "::1", 8080, True),
        ("[::1]:8080", "::1", 80, False),
        ("fd00::/8", "fd12::1", 80, True),
        ("fd00::/8", "10.0.0.1", 80, False),
        ("localhost, 127.0.0.1 ,,example.org", "example.org", 80, True),
        ("localhost example.org", "example.org", 80, True),
        ("", "example.org", 80, False),
        ("localhost", "127.0.0.1", 80, False),  # names are not looked up
    ],
)
def test_no_proxy_matches_like_curl(no_proxy: str, host: str, port: int, direct: bool) -> None:
    assert parse_no_proxy(no_proxy).matches(host, port) is direct


P1, P2 = ProxyURL("p1", 1), ProxyURL("p2", 2)


@pytest.mark.parametrize(
    ("env", "http", "https"),
    [
        pytest.param({}, None, None, id="none"),
        pytest.param({"HTTPS_PROXY": "http://p1:1"}, None, P1, id="https-only"),
        pytest.param({"HTTP_PROXY": "http://p1:1"}, P1, None, id="http-only"),
        pytest.param({"https_proxy": "p1:1", "HTTPS_PROXY": "http://p2:2"}, None, P1, id="lower"),
        pytest.param({"http_proxy": "", "HTTP_PROXY": "http://p2:2"}, None, None, id="empty"),
        pytest.param({"http_proxy": "  "}, None, None, id="blank"),
        pytest.param({"ALL_PROXY": "http://p1:1"}, None, None, id="all-proxy-unused"),
    ],
)
def test_the_environment_names_a_proxy_per_scheme_lowercase_first(
    env: dict[str, str], http: ProxyURL | None, https: ProxyURL | None
) -> None:
    proxies = from_env(env)
    assert (proxies.http, proxies.https) == (http, https)


def test_a_bad_proxy_in_the_environment_names_the_variable() -> None:
    with pytest.raises(ValueError, match=r"^environment variable https_proxy: socks5://") as e:
        from_env({"https_proxy": "socks5://u:s3cret@p:1080"})
    assert "s3cret" not in str(e.value)


def test_no_proxy_lowercase_decides_even_when_empty() -> None:
    env = from_env({"HTTPS_PROXY": "http://p1:1", "no_proxy": "", "NO_PROXY": "*"})
    assert env.pick("https", "example.com", 443) == P1


def test_an_accounts_own_setting_wins_and_no_proxy_filters_only_the_environment() -> None:
    env = from_env(
        {"HTTPS_PROXY": "http://p1:1", "HTTP_PROXY": "http://p2:2", "NO_PROXY": "internal"}
    )
    assert route(None, env, "https://api.example/v1") == P1
    assert route(None, env, "http://api.example/v1") == P2
    assert route(None, env, "https://llm.internal/v1") is None
    assert route(DIRECT, env, "https://api.example/v1") is None
    own = ProxyURL("own", 3)
    assert route(own, env, "https://llm.internal/v1") == own
    assert route(None, EnvProxies(), "https://api.example/v1") is None


def test_describe_says_how_calls_go_out_and_never_shows_a_credential() -> None:
    env = from_env({"HTTPS_PROXY": "http://u:s3cret@p1:1", "NO_PROXY": "internal"})
    assert describe(None, env, "https://api.example/v1") == "http://p1:1 (from HTTPS_PROXY)"
    assert describe(None, env, "https://llm.internal/v1") == "direct (NO_PROXY)"
    assert describe(None, env, "http://api.example/v1") == "direct"
    assert describe(None, env, "") == "from the environment"
    assert describe(DIRECT, env, "https://api.example/v1") == 'direct (proxy = "direct")'
    own = parse_proxy("http://me:s3cret@own:3")
    assert describe(own, env, "https://api.example/v1") == "http://own:3"
