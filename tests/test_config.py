"""config.parse / config.load: defaults, types, and one-line errors naming file and key."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import (
    AccountConfig,
    Api,
    Config,
    ConfigError,
    ServerConfig,
    Timeouts,
    load,
    parse,
)
from proxy.config.egress import DIRECT, ProxyURL

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"
PATH = "conf/seamline.toml"
ACCOUNT = '[[accounts]]\nname = "a"\nbase_url = "http://127.0.0.1:9/v1"\n'


def ok(text: str, env: dict[str, str] | None = None) -> Config:
    return parse(text, PATH, {} if env is None else env)


def error(text: str, env: dict[str, str] | None = None) -> str:
    """The ConfigError message for ``text``; fails unless it is exactly one line."""
    with pytest.raises(ConfigError) as info:
        parse(text, PATH, {} if env is None else env)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(f"{PATH}: ")
    return message


def toml_string(value: str) -> str:
    """A TOML basic string for any text: everything but letters and digits escaped."""
    return (
        '"' + "".join(c if c.isascii() and c.isalnum() else f"\\U{ord(c):08x}" for c in value) + '"'
    )


# -- defaults and accepted values ------------------------------------------------------


def test_minimal_config_takes_every_default() -> None:
    config = ok(ACCOUNT)
    assert config.path == PATH
    assert config.server == ServerConfig()
    assert config.timeouts == Timeouts()
    assert config.accounts == (
        AccountConfig(name="a", base_url="http://127.0.0.1:9/v1", api_key=None, headers={}),
    )


def test_defaults_are_the_documented_ones() -> None:
    assert ServerConfig() == ServerConfig(
        host="127.0.0.1",
        port=8080,
        api_keys=(),
        max_body_bytes=16 * 1024 * 1024,
        max_event_bytes=8 * 1024 * 1024,
    )
    assert Timeouts() == Timeouts(connect=10.0, headers=300.0, idle=300.0, total=0.0)


def test_example_config_is_valid_without_environment_and_lists_the_defaults() -> None:
    config = parse(EXAMPLE.read_text("utf-8"), str(EXAMPLE), {})
    assert config.server == ServerConfig()
    assert config.timeouts == Timeouts()
    assert [a.name for a in config.accounts] == ["ollama-local"]
    assert config.accounts[0].api_key is None


def test_max_concurrent_left_out_is_derived_from_the_open_file_limit() -> None:
    assert ok(ACCOUNT).server.max_concurrent is None
    assert ok("[server]\nmax_concurrent = 0\n" + ACCOUNT).server.max_concurrent == 0
    assert ok("[server]\nmax_concurrent = 5\n" + ACCOUNT).server.max_concurrent == 5


def test_forwarded_response_headers_take_names_and_globs() -> None:
    text = '[server]\nforward_response_headers = ["x-ratelimit-*", "Openai-Version"]\n'
    server = ok(text + ACCOUNT).server
    assert server.forward_response_headers == ("x-ratelimit-*", "Openai-Version")


@pytest.mark.parametrize("glob", ["", "x y", "a:b", "x\\nb"])
def test_a_forwarded_header_that_is_no_header_name_is_rejected(glob: str) -> None:
    text = f"[server]\nforward_response_headers = [{toml_string(glob)}]\n"
    message = error(text + ACCOUNT)
    assert message.startswith(f"{PATH}: server.forward_response_headers: not a header name")


def test_every_key_is_read() -> None:
    config = ok(
        """
        [server]
        host = "0.0.0.0"
        port = 0
        api_keys = ["client-key-1", "client-key-2"]
        max_body_bytes = 1024
        max_event_bytes = 2048

        [timeouts]
        connect = 1.5
        headers = 2
        idle = 3
        total = 0

        [[accounts]]
        name = "one"
        base_url = "https://api.example.com/v1/"
        api_key = "sk-one"
        headers = { "X-Extra" = "value", "HTTP-Referer" = "https://example.com" }

        [[accounts]]
        name = "two"
        base_url = "http://[::1]:8000/v1"
        api_key_env = "TWO_KEY"
        """,
        env={"TWO_KEY": "sk-two"},
    )
    assert config.server == ServerConfig(
        host="0.0.0.0",
        port=0,
        api_keys=("client-key-1", "client-key-2"),
        max_body_bytes=1024,
        max_event_bytes=2048,
    )
    assert config.timeouts == Timeouts(connect=1.5, headers=2.0, idle=3.0, total=0.0)
    one, two = config.accounts
    assert one == AccountConfig(
        name="one",
        base_url="https://api.example.com/v1",
        api_key="sk-one",
        headers={"X-Extra": "value", "HTTP-Referer": "https://example.com"},
    )
    assert two.api_key == "sk-two"
    assert two.base_url == "http://[::1]:8000/v1"


def test_integer_timeouts_become_floats() -> None:
    timeouts = ok("[timeouts]\nconnect = 5\nidle = 0\n" + ACCOUNT).timeouts
    assert timeouts.connect == 5.0 and type(timeouts.connect) is float
    assert timeouts.idle == 0.0 and type(timeouts.idle) is float


def test_trailing_slashes_are_stripped_from_base_url() -> None:
    config = ok('[[accounts]]\nname = "a"\nbase_url = "http://h/v1//"\n')
    assert config.accounts[0].base_url == "http://h/v1"


@pytest.mark.parametrize("port", [0, 1, 65535])
def test_port_accepts_the_whole_range(port: int) -> None:
    assert ok(f"[server]\nport = {port}\n" + ACCOUNT).server.port == port


def test_config_is_frozen() -> None:
    config = ok(ACCOUNT)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.port = 1  # type: ignore[misc]


# -- api keys and secrets --------------------------------------------------------------


def test_api_key_env_reads_the_given_environment() -> None:
    text = '[[accounts]]\nname = "a"\nbase_url = "http://h/v1"\napi_key_env = "MY_KEY"\n'
    assert ok(text, env={"MY_KEY": "sk-from-env"}).accounts[0].api_key == "sk-from-env"


def test_api_key_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEAMLINE_TEST_KEY", "sk-process-env")
    text = '[[accounts]]\nname = "a"\nbase_url = "http://h/v1"\napi_key_env = "SEAMLINE_TEST_KEY"\n'
    assert parse(text, PATH).accounts[0].api_key == "sk-process-env"


@pytest.mark.parametrize("env", [{}, {"MY_KEY": ""}], ids=["unset", "empty"])
def test_unset_or_empty_api_key_env_names_the_variable(env: dict[str, str]) -> None:
    text = '[[accounts]]\nname = "a"\nbase_url = "http://h/v1"\napi_key_env = "MY_KEY"\n'
    message = error(text, env)
    assert message == f"{PATH}: accounts[0].api_key_env: environment variable 'MY_KEY' is not set"


def test_api_key_and_api_key_env_together_are_rejected() -> None:
    text = (
        '[[accounts]]\nname = "a"\nbase_url = "http://h/v1"\n'
        'api_key = "sk-x"\napi_key_env = "MY_KEY"\n'
    )
    message = error(text, {"MY_KEY": "sk-y"})
    assert message == f"{PATH}: accounts[0].api_key_env: give api_key or api_key_env, not both"


def test_secrets_lists_account_keys_and_client_keys() -> None:
    config = ok(
        """
        [server]
        api_keys = ["client-1", "client-2"]
        [[accounts]]
        name = "keyed"
        base_url = "http://h/v1"
        api_key = "sk-account"
        [[accounts]]
        name = "from-env"
        base_url = "http://h/v1"
        api_key_env = "K"
        [[accounts]]
        name = "keyless"
        base_url = "http://h/v1"
        """,
        env={"K": "sk-env"},
    )
    assert sorted(config.secrets()) == ["client-1", "client-2", "sk-account", "sk-env"]


def test_secrets_is_empty_without_any_key() -> None:
    assert ok(ACCOUNT).secrets() == []


# -- wrong types -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[server]\nport = "8080"', "server.port: expected an integer, got a string"),
        ("[server]\nport = true", "server.port: expected an integer, got a boolean"),
        ("[server]\nport = 80.0", "server.port: expected an integer, got a number"),
        ("[server]\nhost = 1", "server.host: expected a string, got an integer"),
        ("[server]\nmax_body_bytes = false", "server.max_body_bytes: expected an integer"),
        ('[server]\napi_keys = "k"', "server.api_keys: expected an array of strings"),
        ("[server]\napi_keys = [1]", "server.api_keys: expected an array of strings"),
        ("[timeouts]\nidle = true", "timeouts.idle: expected a number, got a boolean"),
        ('[timeouts]\nconnect = "10"', "timeouts.connect: expected a number, got a string"),
        ("server = 1", "server: expected a table, got an integer"),
        ("timeouts = [1]", "timeouts: expected a table, got an array"),
    ],
)
def test_wrong_type_names_the_key(text: str, expected: str) -> None:
    assert error(text + "\n" + ACCOUNT).startswith(f"{PATH}: {expected}")


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ('name = 1\nbase_url = "http://h"', "accounts[0].name: expected a string"),
        ('name = "a"\nbase_url = 1', "accounts[0].base_url: expected a string"),
        ('name = "a"\nbase_url = "http://h"\napi_key = 1', "accounts[0].api_key: expected"),
        ('name = "a"\nbase_url = "http://h"\napi_key_env = []', "accounts[0].api_key_env:"),
    ],
)
def test_wrong_account_field_type_names_the_key(field: str, expected: str) -> None:
    assert error("[[accounts]]\n" + field + "\n").startswith(f"{PATH}: {expected}")


def test_header_values_must_be_strings() -> None:
    text = '[[accounts]]\nname = "a"\nbase_url = "http://h"\nheaders = { X-Extra = 1 }\n'
    assert error(text) == f"{PATH}: accounts[0].headers.X-Extra: expected a string, got an integer"


def test_headers_must_be_a_table() -> None:
    text = '[[accounts]]\nname = "a"\nbase_url = "http://h"\nheaders = "X-Extra: 1"\n'
    assert error(text) == (
        f"{PATH}: accounts[0].headers: expected a table of strings, got a string"
    )


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ('"Bad Name" = "v"', '"Bad Name": not a valid HTTP header name'),
        ('"" = "v"', '"": not a valid HTTP header name'),
        ('X-Inject = "v\\r\\nEvil: 1"', "X-Inject: header value must not contain CR, LF or NUL"),
    ],
)
def test_headers_that_http_cannot_carry_are_rejected(header: str, problem: str) -> None:
    text = f'[[accounts]]\nname = "a"\nbase_url = "http://h"\nheaders = {{ {header} }}\n'
    assert error(text) == f"{PATH}: accounts[0].headers.{problem}"


# -- missing, unknown and invalid values -----------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("extra = 1\n" + ACCOUNT, "extra"),
        ("[server]\nprot = 8080\n" + ACCOUNT, "server.prot"),
        ("[timeouts]\nidel = 5\n" + ACCOUNT, "timeouts.idel"),
        (ACCOUNT + 'apikey = "sk-x"\n', "accounts[0].apikey"),
        (ACCOUNT + ACCOUNT.replace('"a"', '"b"') + "base-url = 1\n", "accounts[1].base-url"),
        ("[logging]\nlevel = 1\n" + ACCOUNT, "logging"),
    ],
)
def test_unknown_key_at_every_level_is_rejected(text: str, key: str) -> None:
    assert error(text) == f"{PATH}: {key}: unknown key"


@given(st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=20))
def test_any_unknown_key_gives_one_line_naming_it(name: str) -> None:
    # Every [server] key: a drawn name that happens to be one is no unknown key.
    known = {f.name for f in dataclasses.fields(ServerConfig)}
    if name in known:
        return
    message = error(f"[server]\n{toml_string(name)} = 1\n" + ACCOUNT)
    assert message.endswith(": unknown key")
    assert message.startswith(f"{PATH}: server.")


@pytest.mark.parametrize(
    ("fields", "key"),
    [('base_url = "http://h"', "name"), ('name = "a"', "base_url")],
)
def test_missing_account_field_names_the_key(fields: str, key: str) -> None:
    message = error(f"[[accounts]]\n{fields}\n")
    assert message == f"{PATH}: accounts[0].{key}: required key is missing"


@pytest.mark.parametrize("text", ["", "[server]\nport = 1\n", "accounts = []\n"])
def test_no_accounts_is_rejected(text: str) -> None:
    assert error(text) == f"{PATH}: accounts: at least one [[accounts]] entry is required"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[accounts]\nname = "a"', "accounts: expected an array of tables ([[accounts]])"),
        ("accounts = [1]", "accounts[0]: expected a table"),
    ],
)
def test_accounts_must_be_an_array_of_tables(text: str, expected: str) -> None:
    assert error(text) == f"{PATH}: {expected}"


def test_duplicate_account_names_are_rejected() -> None:
    message = error(ACCOUNT + ACCOUNT)
    assert message == f"{PATH}: accounts[1].name: duplicate account name 'a'"


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_account_name_is_rejected(name: str) -> None:
    message = error(f'[[accounts]]\nname = "{name}"\nbase_url = "http://h"\n')
    assert message == f"{PATH}: accounts[0].name: must not be empty"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "127.0.0.1:8000/v1",
        "ftp://h/v1",
        "http://",
        "http:///v1",
        "https://:443/v1",
        "http://[::1/v1",
        "http://h:99999/v1",
        "http://h:port/v1",
        "http://ex ample.com/v1",
        "http://h/v1\\n",
        "http://h/\\tv1",
    ],
)
def test_bad_base_url_is_rejected(url: str) -> None:
    message = error(f'[[accounts]]\nname = "a"\nbase_url = "{url}"\n')
    assert message.startswith(f"{PATH}: accounts[0].base_url: expected an http:// or https:// URL")


@pytest.mark.parametrize("key", ["connect", "headers", "idle", "total"])
def test_negative_timeout_is_rejected(key: str) -> None:
    message = error(f"[timeouts]\n{key} = -1\n" + ACCOUNT)
    assert message == f"{PATH}: timeouts.{key}: must not be negative"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1" + "0" * 400])
def test_non_finite_or_huge_timeout_is_rejected(value: str) -> None:
    assert error(f"[timeouts]\nidle = {value}\n" + ACCOUNT).startswith(f"{PATH}: timeouts.idle: ")


@pytest.mark.parametrize("port", [-1, 65536, 10**30])
def test_port_out_of_range_is_rejected(port: int) -> None:
    message = error(f"[server]\nport = {port}\n" + ACCOUNT)
    assert message == f"{PATH}: server.port: must be between 0 and 65535"


@pytest.mark.parametrize("key", ["max_body_bytes", "max_event_bytes"])
@pytest.mark.parametrize("value", [0, -5])
def test_size_limits_must_be_positive(key: str, value: int) -> None:
    assert (
        error(f"[server]\n{key} = {value}\n" + ACCOUNT) == f"{PATH}: server.{key}: must be positive"
    )


@pytest.mark.parametrize(
    "text",
    ["[server\n", "port = \n", "a = 1\na = 2\n", "x = " + "9" * 5000 + "\n", 'x = "\x01"\n'],
    ids=["unclosed-table", "no-value", "duplicate-key", "integer-past-digit-limit", "control-char"],
)
def test_invalid_toml_is_a_config_error_naming_the_file(text: str) -> None:
    assert error(text).startswith(f"{PATH}: invalid TOML: ")


# -- load ------------------------------------------------------------------------------


def test_load_reads_the_file_and_records_its_path(tmp_path: Path) -> None:
    path = tmp_path / "seamline.toml"
    path.write_text(ACCOUNT, "utf-8")
    config = load(path, env={})
    assert config.path == str(path)
    assert config.accounts[0].name == "a"


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "seamline.toml"
    path.write_text("[server]\nport = -1\n" + ACCOUNT, "utf-8")
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert str(info.value) == f"{path}: server.port: must be between 0 and 65535"


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: p / "missing.toml", "No such file or directory"),
        (lambda p: p, "Is a directory"),
        (lambda p: p / "file" / "config.toml", "Not a directory"),
    ],
    ids=["missing", "directory", "through-a-file"],
)
def test_unreadable_path_is_a_config_error(
    tmp_path: Path, make: Callable[[Path], Path], problem: str
) -> None:
    (tmp_path / "file").write_text("", "utf-8")
    path = make(tmp_path)
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert str(info.value) == f"{path}: cannot read file: {problem}"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_file_without_read_permission_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "secret.toml"
    path.write_text(ACCOUNT, "utf-8")
    path.chmod(0)
    with pytest.raises(ConfigError, match="cannot read file: Permission denied"):
        load(path, env={})


def test_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\n" + ACCOUNT.encode())
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert str(info.value) == f"{path}: invalid TOML: file is not UTF-8"


# -- outbound proxies ------------------------------------------------------------------


def _with_proxy(line: str) -> str:
    return ACCOUNT + line + "\n"


def test_an_accounts_proxy_is_read_with_its_credentials_and_kept_out_of_sight() -> None:
    config = ok(_with_proxy('proxy = "http://me:p%40ss-w0rd@proxy.corp:3128"'))
    proxy = config.accounts[0].proxy
    assert proxy == ProxyURL("proxy.corp", 3128, "me", "p@ss-w0rd")
    assert "p@ss-w0rd" in config.secrets()
    assert proxy.authorization.removeprefix("Basic ") in config.secrets()
    assert "p@ss-w0rd" not in repr(config)


@pytest.mark.parametrize("value", ["direct", "DIRECT", " direct "])
def test_proxy_direct_opts_an_account_out_of_the_environments_proxy(value: str) -> None:
    config = ok(_with_proxy(f'proxy = "{value}"'), env={"HTTP_PROXY": "http://p:1"})
    assert config.accounts[0].proxy == DIRECT
    assert config.proxy_for(config.accounts[0], "http://127.0.0.1:9/v1/x") is None


def test_without_a_proxy_of_its_own_an_account_follows_the_environment() -> None:
    config = ok(ACCOUNT, env={"http_proxy": "http://u:env-s3cret@p:1", "no_proxy": "example.org"})
    assert config.accounts[0].proxy is None
    assert config.proxy_for(config.accounts[0], "http://127.0.0.1:9/v1/x") == ProxyURL(
        "p", 1, "u", "env-s3cret"
    )
    assert config.proxy_for(config.accounts[0], "http://api.example.org/v1/x") is None
    assert "env-s3cret" in config.secrets()


def test_proxy_env_reads_the_proxy_from_a_variable() -> None:
    config = ok(_with_proxy('proxy_env = "MY_PROXY"'), env={"MY_PROXY": "http://u:s3cret@p:1"})
    assert config.accounts[0].proxy == ProxyURL("p", 1, "u", "s3cret")


@pytest.mark.parametrize(
    ("line", "env", "expected"),
    [
        ('proxy = ""', {}, 'accounts[0].proxy: is empty: give an HTTP proxy URL, or "direct"'),
        ('proxy = "none"', {}, 'accounts[0].proxy: say "direct" for none'),
        ("proxy = 3128", {}, "accounts[0].proxy: expected a string, got an integer"),
        (
            'proxy = "socks5://u:s3cret@p:1080"',
            {},
            "accounts[0].proxy: socks5:// proxies are not supported",
        ),
        (
            'proxy = "https://u:s3cret@p:443"',
            {},
            "accounts[0].proxy: https:// proxies are not supported",
        ),
        ('proxy = "http://u:s3cret@proxy.corp"', {}, "accounts[0].proxy: expected http://"),
        ('proxy = "proxy.corp:3128"', {}, "accounts[0].proxy: expected http://"),
        ('proxy = "http://p:3128/path"', {}, "a path, query or fragment after the port"),
        ('proxy_env = "NOPE"', {}, "accounts[0].proxy_env: environment variable 'NOPE' is not set"),
        (
            'proxy = "direct"\nproxy_env = "P"',
            {"P": "http://p:1"},
            "accounts[0].proxy_env: give proxy or proxy_env, not both",
        ),
        (
            'proxy_env = "P"',
            {"P": "socks5://u:s3cret@p:1"},
            "accounts[0].proxy_env: socks5:// proxies are not supported",
        ),
    ],
)
def test_a_bad_proxy_is_one_line_naming_file_and_key_and_never_the_password(
    line: str, env: dict[str, str], expected: str
) -> None:
    message = error(_with_proxy(line), env)
    assert expected in message
    assert "s3cret" not in message


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"])
def test_a_bad_proxy_in_the_environment_is_one_line_naming_the_variable(name: str) -> None:
    message = error(ACCOUNT, {name: "socks5h://u:s3cret@p:1080"})
    assert message.startswith(f"{PATH}: environment variable {name}: socks5h://")
    assert "s3cret" not in message


def test_an_account_speaks_chat_unless_it_says_responses() -> None:
    assert ok(ACCOUNT).accounts[0].api is Api.CHAT
    assert ok(ACCOUNT + 'api = "responses"\n').accounts[0].api is Api.RESPONSES
    assert ok(ACCOUNT + 'api = "messages"\n').accounts[0].api is Api.MESSAGES
    message = error(ACCOUNT + 'api = "graphql"\n')
    assert message == (
        f"{PATH}: accounts[0].api: expected one of chat, responses, messages, got 'graphql'"
    )


def test_an_anthropic_account_speaks_messages_to_anthropic_by_default() -> None:
    text = '[[accounts]]\nname = "claude"\nkind = "anthropic"\napi_key = "sk-ant"\n'
    acc = ok(text).accounts[0]
    assert (acc.api, acc.base_url) == (Api.MESSAGES, "https://api.anthropic.com/v1")
