"""The `wg` and `wg-quick` file formats: what parses, what fails (and where), round trips.

The expected behaviour is wireguard-tools' (src/config.c, src/wg-quick/linux.bash); where the
real `wg-quick` is installed, `strip` is checked against it byte for byte.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
from ipaddress import ip_interface, ip_network
from pathlib import Path

import pytest

from wiresnake import config as cfgmod
from wiresnake.config import (
    Config,
    ConfigError,
    EndpointSpec,
    InterfaceSection,
    PeerSection,
    WgQuickSettings,
    format_config,
    parse_allowed_ips,
    parse_config,
    parse_endpoint_spec,
    parse_fwmark,
    parse_listen_port,
    parse_persistent_keepalive,
    parse_set_arguments,
    read_config,
    read_key_file,
    resolve_config,
    resolve_endpoint,
    strip_wg_quick,
)
from wiresnake.protocol.settings import DeviceConfig, PeerConfig


def key(n: int) -> bytes:
    return bytes([n]) * 32


def b64(k: bytes) -> str:
    return base64.b64encode(k).decode()


PRIV, PUB1, PUB2, PSK = key(0x40), key(1), key(2), key(3)

FULL = f"""\
# a wg file with every key
[Interface]
PrivateKey = {b64(PRIV)}
ListenPort = 51820
FwMark = 0x1234

[Peer]
PublicKey = {b64(PUB1)}
PresharedKey = {b64(PSK)}
AllowedIPs = 10.0.0.0/24, fd00::/64
Endpoint = 192.0.2.1:51820
PersistentKeepalive = 25

[Peer]
PublicKey = {b64(PUB2)}
Endpoint = [2001:db8::1]:4500
AllowedIPs = 10.1.0.1
"""


def errors_of(text: str, *, wg_quick: bool = False) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "wg0.conf", wg_quick=wg_quick)
    return str(info.value)


# --- reading a wg file ----------------------------------------------------------------


def test_every_wg_key_is_read() -> None:
    c = parse_config(FULL, "wg0.conf")
    assert c.interface == InterfaceSection(PRIV, 51820, 0x1234)
    assert c.peers == (
        PeerSection(
            public_key=PUB1,
            preshared_key=PSK,
            endpoint=EndpointSpec("192.0.2.1", 51820),
            persistent_keepalive=25,
            allowed_ips=(ip_network("10.0.0.0/24"), ip_network("fd00::/64")),
        ),
        PeerSection(
            public_key=PUB2,
            endpoint=EndpointSpec("2001:db8::1", 4500),
            allowed_ips=(ip_network("10.1.0.1/32"),),
        ),
    )
    assert c.quick.is_empty
    assert c.warnings == ()


def test_keys_and_sections_are_case_insensitive_and_spaces_go_anywhere() -> None:
    text = (
        "[ interFACE ]\r\n"
        f"  private KEY\t=  {b64(PRIV)[:10]} {b64(PRIV)[10:]}  # the key, split by a space\r\n"
        "LISTENPORT=5 1 8 2 0\r\n"
        "[PEER]\n"
        f"publickey={b64(PUB1)}\n"
        "allowedips = 10.0.0.1/32 ,\tfd00::1 / 128\n"
        "endpoint = my.host.example : 51820\n"
    )
    c = parse_config(text)
    assert c.interface.private_key == PRIV
    assert c.interface.listen_port == 51820
    assert c.peers[0].allowed_ips == (ip_network("10.0.0.1/32"), ip_network("fd00::1/128"))
    # wg drops the spaces inside values too
    assert c.peers[0].endpoint == EndpointSpec("my.host.example", 51820)


def test_a_comment_runs_to_the_end_of_the_line_even_inside_a_value() -> None:
    text = f"[Interface]\nPrivateKey = {b64(PRIV)}#comment\n#[Peer]\n  # only a comment\n"
    c = parse_config(text)
    assert c.interface.private_key == PRIV and c.peers == ()


def test_a_later_value_wins_and_allowed_ips_lines_add_up() -> None:
    text = (
        "[Interface]\nListenPort = 1\nListenPort = 2\n[Interface]\nFwMark = 7\n"
        f"[Peer]\nPublicKey = {b64(PUB1)}\nAllowedIPs = 10.0.0.1\nAllowedIPs = 10.0.0.2\n"
        "PersistentKeepalive = 5\nPersistentKeepalive = off\n"
    )
    c = parse_config(text)
    assert c.interface == InterfaceSection(None, 2, 7)
    assert c.peers[0].allowed_ips == (ip_network("10.0.0.1/32"), ip_network("10.0.0.2/32"))
    assert c.peers[0].persistent_keepalive == 0


def test_host_bits_are_masked_with_a_warning_naming_the_line() -> None:
    c = parse_config(f"[Peer]\nPublicKey = {b64(PUB1)}\nAllowedIPs = 10.0.0.1/24\n", "x.conf")
    assert c.peers[0].allowed_ips == (ip_network("10.0.0.0/24"),)
    assert c.warnings == ("x.conf:3: Warning: AllowedIP has nonzero host part: 10.0.0.1/24",)


def test_an_empty_file_is_an_empty_configuration() -> None:
    assert parse_config("") == Config()
    assert parse_config("\n\n# nothing\n[Interface]\n") == Config()


def test_an_empty_configuration_is_warned_about_with_its_file() -> None:
    assert parse_config("", "wg0.conf").warnings == (
        "wg0.conf: Warning: an empty configuration: no key is set in any section",
    )
    assert parse_config("# nothing\n\n[Interface]\n", "wg0.conf").warnings == (
        "wg0.conf:3: Warning: an empty configuration: no key is set in any section",
    )
    assert parse_config("[Interface]\nListenPort = 1\n").warnings == ()
    assert parse_config(f"[Peer]\nPublicKey = {b64(PUB1)}\n").warnings == ()


def test_the_same_peer_twice_is_warned_about_with_both_lines() -> None:
    text = (
        f"[Peer]\nPublicKey = {b64(PUB1)}\n[Peer]\nPublicKey = {b64(PUB2)}\n"
        f"[Peer]\n# again\nPublicKey = {b64(PUB1)}\n"
    )
    assert parse_config(text, "wg0.conf").warnings == (
        "wg0.conf:7: Warning: PublicKey: a second [Peer] with this key (the first is on "
        "line 1) updates that peer",
    )


def test_a_listen_port_in_use_is_named_with_its_line() -> None:
    c = parse_config("[Interface]\n# port\nListenPort = 51820\n", "wg0.conf")
    assert c.port_in_use() == "wg0.conf:3: ListenPort: UDP port 51820 is already in use"
    assert parse_config("[Interface]\nListenPort = 0\n").port_in_use() is None
    assert parse_config("[Interface]\n").port_in_use() is None


def test_the_same_peer_twice_is_kept_as_written_and_merged_for_the_engine() -> None:
    text = (
        f"[Peer]\nPublicKey = {b64(PUB1)}\nAllowedIPs = 10.0.0.1\nPersistentKeepalive = 9\n"
        f"[Peer]\nPublicKey = {b64(PUB1)}\nAllowedIPs = 10.0.0.2\n"
    )
    c = parse_config(text)
    assert len(c.peers) == 2
    (merged,) = c.merged_peers()
    # the second [Peer] replaces the allowed IPs (wg sends replace_allowed_ips for each)
    assert merged.allowed_ips == (ip_network("10.0.0.2/32"),)
    assert merged.persistent_keepalive == 9


def test_incremental_allowed_ips_with_plus_and_minus() -> None:
    c = parse_config(f"[Peer]\nPublicKey = {b64(PUB1)}\nAllowedIPs = +10.0.0.0/8, -10.1.0.0/16\n")
    (p,) = c.peers
    assert not p.replace_allowed_ips
    assert p.allowed_ips == (ip_network("10.0.0.0/8"),)
    assert p.removed_allowed_ips == (ip_network("10.1.0.0/16"),)


# --- where a file goes wrong ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[Interface]\nPrivateKey = abc\n",
            "wg0.conf:2: PrivateKey: Key is not the correct length or format: `abc'",
        ),
        (
            "[Interface]\n\n\nListenPort = -1\n",
            "wg0.conf:4: ListenPort: Servname not supported for ai_socktype: `-1'",
        ),
        (
            "[Interface]\nListenPort = 65536\n",
            "wg0.conf:2: ListenPort: Port is not in 0-65535: `65536'",
        ),
        (
            "[Interface]\nFwMark = 0X10\n",
            "wg0.conf:2: FwMark: Fwmark is neither 0/off nor 0-0xffffffff: `0X10'",
        ),
        (
            f"[Peer]\nPublicKey = {b64(PUB1)}\nPersistentKeepalive = 65536\n",
            "wg0.conf:3: PersistentKeepalive: Persistent keepalive interval is neither 0/off "
            "nor 1-65535: `65536'",
        ),
        (
            f"[Peer]\nPublicKey = {b64(PUB1)}\nEndpoint = 192.0.2.1\n",
            "wg0.conf:3: Endpoint: Unable to find port of endpoint: `192.0.2.1'",
        ),
        (
            f"[Peer]\nPublicKey = {b64(PUB1)}\nEndpoint = [::1:5\n",
            "wg0.conf:3: Endpoint: Unable to find matching brace of endpoint: `[::1:5'",
        ),
        (
            f"[Peer]\nPublicKey = {b64(PUB1)}\nAllowedIPs = 10.0.0.1/33\n",
            "wg0.conf:3: AllowedIPs: AllowedIP is not in the correct format: `10.0.0.1/33'",
        ),
        (
            f"[Peer]\nPublicKey = {b64(PUB1)}\nAllowedIPs = 10.0.0.1/32,\n",
            "wg0.conf:3: AllowedIPs: Unable to parse IP address: `'",
        ),
        (
            f"[Peer]\nPublicKey = {b64(PUB1)}\nAllowedIPs = 10.0.0.256\n",
            "wg0.conf:3: AllowedIPs: Unable to parse IP address: `10.0.0.256'",
        ),
        (
            f"[Peer]\nPublicKey = {b64(PUB1)}\nAllowedIPs = 10.0.0.0/8x\n",
            "wg0.conf:3: AllowedIPs: AllowedIP is not in the correct format: `10.0.0.0/8x'",
        ),
        ("[Interface]\nPrivateKey =\n", "wg0.conf:2: PrivateKey: empty value"),
        (f"[Peer]\nPublicKey = {b64(PUB1)}\nAllowedIPs =\n", "wg0.conf:3: AllowedIPs: empty value"),
        ("[Interface]\nListenport: 5\n", "wg0.conf:2: Line unrecognized: `Listenport:5'"),
        ("[Interface]\nFoo = bar\n", "wg0.conf:2: Foo: unknown key in [Interface]"),
        (
            f"[Interface]\nPublicKey = {b64(PUB1)}\n",
            "wg0.conf:2: PublicKey: unknown key in [Interface]",
        ),
        ("[Peer]\nListenPort = 5\n", "wg0.conf:2: ListenPort: unknown key in [Peer]"),
        (
            "ListenPort = 5\n",
            "wg0.conf:1: ListenPort: key outside of an [Interface] or [Peer] section",
        ),
        (
            "[Interfaces]\n",
            "wg0.conf:1: Line unrecognized: `[Interfaces]' (sections are [Interface] and [Peer])",
        ),
        (
            "[Interface]\n[Peer]\nAllowedIPs = 10.0.0.1\n",
            "wg0.conf:2: [Peer] section has no PublicKey",
        ),
        (
            "[Interface]\nAddress = 10.0.0.1/24\n",
            "wg0.conf:2: Address: a wg-quick key; `wiresnake strip wg0.conf' prints the file "
            "without them",
        ),
    ],
)
def test_errors_name_the_file_the_line_and_the_key(text: str, expected: str) -> None:
    assert errors_of(text) == expected


def test_a_config_error_carries_its_parts() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[Interface]\nFwMark = x\n", "a.conf")
    e = info.value
    assert (e.path, e.line, e.key) == ("a.conf", 2, "FwMark")
    assert isinstance(e, ValueError)


def test_the_missing_public_key_is_reported_after_the_other_errors_of_the_file() -> None:
    # wg checks for public keys once the whole file is read
    assert errors_of("[Peer]\nEndpoint = x\n") == (
        "wg0.conf:2: Endpoint: Unable to find port of endpoint: `x'"
    )


def test_read_config_reports_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        read_config(str(tmp_path / "missing.conf"))
    assert str(info.value) == f"{tmp_path}/missing.conf: No such file or directory"
    good = tmp_path / "wg0.conf"
    good.write_text(FULL)
    assert read_config(str(good)) == parse_config(FULL)
    assert read_config(str(good)).path == str(good)


# --- values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mark"),
    [
        ("off", 0),
        ("OFF", 0),
        ("0", 0),
        ("1234", 1234),
        ("0123", 123),
        ("0x1234", 0x1234),
        ("0xFFFFFFFF", 0xFFFFFFFF),
        ("4294967295", 0xFFFFFFFF),
    ],
)
def test_fwmark_values(text: str, mark: int) -> None:
    assert parse_fwmark(text) == mark


@pytest.mark.parametrize(
    "text",
    ["", "x", "0x", "0X10", "4294967296", "0x100000000", "-1", "+1", "1_0", "0x1g", "\u0661"],
)
def test_bad_fwmarks(text: str) -> None:
    with pytest.raises(ValueError, match="Fwmark is neither 0/off nor 0-0xffffffff"):
        parse_fwmark(text)


def test_listen_port_values() -> None:
    assert parse_listen_port("0") == 0
    assert parse_listen_port("00053") == 53
    assert parse_listen_port("65535") == 65535
    for bad in ("65536", "70000", "-1", "0x10", "1e3", "nosuchservice"):
        with pytest.raises(ValueError):
            parse_listen_port(bad)
    with pytest.raises(ValueError, match="Unable to parse empty port"):
        parse_listen_port("")


def test_listen_port_takes_a_service_name_like_getaddrinfo() -> None:
    try:
        expected = socket.getservbyname("domain", "udp")
    except OSError:
        pytest.skip("no /etc/services entry for domain")
    assert parse_listen_port("domain") == expected


def test_persistent_keepalive_values() -> None:
    assert parse_persistent_keepalive("off") == parse_persistent_keepalive("Off") == 0
    assert parse_persistent_keepalive("0") == 0
    assert parse_persistent_keepalive("65535") == 65535
    for bad in ("65536", "-1", "x", "", "1.5"):
        with pytest.raises(ValueError, match="neither 0/off nor 1-65535"):
            parse_persistent_keepalive(bad)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("192.0.2.1:51820", "192.0.2.1", 51820),
        ("[2001:db8::1]:51820", "2001:db8::1", 51820),
        ("[fe80::1%eth0]:5", "fe80::1%eth0", 5),
        ("vpn.example.com:443", "vpn.example.com", 443),
        ("fe80::1:5", "fe80::1", 5),  # wg splits at the last colon without brackets
    ],
)
def test_endpoints_keep_the_host_as_written(text: str, host: str, port: int) -> None:
    spec = parse_endpoint_spec(text)
    assert spec == EndpointSpec(host, port)
    if text != "fe80::1:5":
        assert str(spec) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "Unable to parse empty endpoint"),
        ("192.0.2.1", "Unable to find port of endpoint: `192.0.2.1'"),
        ("192.0.2.1:", "Unable to find port of endpoint: `192.0.2.1:'"),
        ("[::1]", "Unable to find port of endpoint: `[::1]'"),
        ("[::1]5", "Unable to find port of endpoint: `[::1]5'"),
        ("[::1", "Unable to find matching brace of endpoint: `[::1'"),
        (":5", "Name or service not known: `:5'"),
        ("host:70000", "Port is not in 0-65535: `host:70000'"),
    ],
)
def test_bad_endpoints(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_endpoint_spec(text)
    assert str(info.value) == message


def test_numeric_endpoints_need_no_lookup() -> None:
    assert EndpointSpec("192.0.2.1", 1).is_numeric
    assert EndpointSpec("fe80::1%lo", 1).is_numeric
    assert not EndpointSpec("localhost", 1).is_numeric
    assert not EndpointSpec("192.0.2", 1).is_numeric


def test_allowed_ips_list() -> None:
    ips = parse_allowed_ips("10.0.0.1,::ffff:1.2.3.4/128,0.0.0.0/0,::/0")
    assert ips.add == (
        ip_network("10.0.0.1/32"),
        ip_network("::ffff:1.2.3.4/128"),
        ip_network("0.0.0.0/0"),
        ip_network("::/0"),
    )
    assert ips.replace and ips.remove == () and ips.warnings == ()
    # `wg set ... allowed-ips ""` clears them
    assert parse_allowed_ips("") == cfgmod.AllowedIPs((), (), True, ())
    assert cfgmod.format_allowed_ip(ip_network("::ffff:1.2.3.4/128")) == "::ffff:1.2.3.4/128"


# --- key files (wg set private-key FILE) ------------------------------------------------


def test_key_files(tmp_path: Path) -> None:
    f = tmp_path / "k"
    f.write_text(b64(PRIV) + "\n \t\n")
    assert read_key_file(str(f)) == PRIV
    f.write_text("")
    assert read_key_file(str(f)) == bytes(32)  # empty: the zero key, which clears
    assert read_key_file(os.devnull) == bytes(32)
    f.write_text(b64(PRIV)[:20])
    with pytest.raises(ValueError, match=r"^Invalid length key in key file$"):
        read_key_file(str(f))
    f.write_text(b64(PRIV) + "\nx")
    with pytest.raises(ValueError, match=r"^Found trailing character in key file: `x'$"):
        read_key_file(str(f))
    f.write_text("!" * 44)
    with pytest.raises(ValueError, match=r"^Key is not the correct length or format"):
        read_key_file(str(f))
    with pytest.raises(ValueError, match=r"^fopen: No such file or directory$"):
        read_key_file(str(tmp_path / "none"))


# --- wg set arguments -------------------------------------------------------------------


def test_set_arguments(tmp_path: Path) -> None:
    kf = tmp_path / "key"
    kf.write_text(b64(PRIV) + "\n")
    pf = tmp_path / "psk"
    pf.write_text(b64(PSK))
    change, warnings = parse_set_arguments(
        [
            "listen-port",
            "51820",
            "fwmark",
            "off",
            "private-key",
            str(kf),
            "peer",
            b64(PUB1),
            "preshared-key",
            str(pf),
            "endpoint",
            "192.0.2.1:1",
            "persistent-keepalive",
            "25",
            "allowed-ips",
            "10.0.0.1/24, fd00::/64",
            "peer",
            b64(PUB2),
            "remove",
        ]
    )
    assert change.interface == InterfaceSection(PRIV, 51820, 0)
    assert change.peers == (
        PeerSection(
            public_key=PUB1,
            preshared_key=PSK,
            endpoint=EndpointSpec("192.0.2.1", 1),
            persistent_keepalive=25,
            allowed_ips=(ip_network("10.0.0.0/24"), ip_network("fd00::/64")),
            replace_allowed_ips=True,
        ),
        PeerSection(public_key=PUB2, replace_allowed_ips=False, remove=True),
    )
    assert warnings == ("Warning: AllowedIP has nonzero host part: 10.0.0.1/24",)


def test_a_peer_without_allowed_ips_keeps_its_own() -> None:
    change, _ = parse_set_arguments(["peer", b64(PUB1), "endpoint", "192.0.2.1:1"])
    assert not change.peers[0].replace_allowed_ips
    assert change.interface == InterfaceSection()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bogus"], "Invalid argument: bogus"),
        (["remove"], "Invalid argument: remove"),
        (["listen-port"], "Invalid argument: listen-port"),
        (["peer", b64(PUB1), "listen-port", "1"], "Invalid argument: listen-port"),
        (["peer", "bad"], "Key is not the correct length or format: `bad'"),
        (["fwmark", "x"], "Fwmark is neither 0/off nor 0-0xffffffff: `x'"),
        (["private-key", "/nonexistent/key"], "fopen: No such file or directory"),
    ],
)
def test_bad_set_arguments_say_what_wg_says(args: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_set_arguments(args)
    assert str(info.value) == message


# --- endpoint resolution ------------------------------------------------------------------


def test_numeric_endpoints_resolve_to_themselves() -> None:
    assert resolve_endpoint("192.0.2.1:51820") == ("192.0.2.1", 51820)
    assert resolve_endpoint("[2001:db8::1]:5") == ("2001:db8::1", 5)
    assert resolve_endpoint(EndpointSpec("127.0.0.1", 9)) == ("127.0.0.1", 9)


def test_localhost_resolves_without_a_network() -> None:
    host, port = resolve_endpoint("localhost:5", retries=0)
    assert host in ("127.0.0.1", "::1") and port == 5


def fake_getaddrinfo(failures: list[int]) -> object:
    def getaddrinfo(host: str, port: int, *args: object) -> object:
        if failures:
            code = failures.pop(0)
            raise socket.gaierror(code, {socket.EAI_AGAIN: "Temporary failure"}.get(code, "No"))
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("192.0.2.7", port))]

    return getaddrinfo


def test_transient_resolution_failures_are_retried_with_a_growing_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo([socket.EAI_AGAIN] * 3))
    pauses: list[float] = []
    said: list[str] = []
    got = resolve_endpoint("vpn.example:5", sleep=pauses.append, log=said.append)
    assert got == ("192.0.2.7", 5)
    assert pauses == [1.0, 1.2, 1.44]
    assert said[0] == "Temporary failure: `vpn.example:5'. Trying again in 1.00 seconds..."
    assert said[2].endswith("Trying again in 1.44 seconds...")


def test_resolution_gives_up_after_the_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo([socket.EAI_AGAIN] * 99))
    monkeypatch.setenv("WG_ENDPOINT_RESOLUTION_RETRIES", "2")
    pauses: list[float] = []
    with pytest.raises(ValueError, match=r"^Temporary failure: `h:5'$"):
        resolve_endpoint("h:5", sleep=pauses.append, log=lambda _s: None)
    assert len(pauses) == 2


def test_a_name_that_does_not_exist_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo([socket.EAI_NONAME]))
    with pytest.raises(ValueError, match=r"^No: `h:5'$"):
        resolve_endpoint("h:5", sleep=lambda _s: pytest.fail("retried"))


def test_a_bad_retry_count_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WG_ENDPOINT_RESOLUTION_RETRIES", "many")
    with pytest.raises(ValueError, match="Unable to parse WG_ENDPOINT_RESOLUTION_RETRIES"):
        resolve_endpoint("h.example:5")


def test_resolving_a_config_names_the_endpoint_line() -> None:
    text = f"[Peer]\nPublicKey = {b64(PUB1)}\n\nEndpoint = nowhere.example:5\n"
    c = parse_config(text, "wg0.conf")

    def refuse(spec: EndpointSpec) -> tuple[str, int]:
        raise ValueError(f"Name or service not known: `{spec}'")

    with pytest.raises(ConfigError) as info:
        resolve_config(c, refuse)
    assert str(info.value) == (
        "wg0.conf:4: Endpoint: Name or service not known: `nowhere.example:5'"
    )
    resolved = resolve_config(c, lambda spec: ("192.0.2.9", spec.port))
    assert resolved.peers[0].endpoint == EndpointSpec("192.0.2.9", 5)


# --- the engine's settings -----------------------------------------------------------------


def test_a_file_maps_onto_the_engine_settings() -> None:
    text = FULL.replace("192.0.2.1:51820", "vpn.example:51820")
    dev = parse_config(text).to_device_config(resolve=lambda s: ("198.51.100.1", s.port))
    assert dev == DeviceConfig(
        private_key=PRIV,
        listen_port=51820,
        fwmark=0x1234,
        peers=(
            PeerConfig(
                public_key=PUB1,
                preshared_key=PSK,
                endpoint=("198.51.100.1", 51820),
                allowed_ips=(ip_network("10.0.0.0/24"), ip_network("fd00::/64")),
                persistent_keepalive=25,
            ),
            PeerConfig(
                public_key=PUB2,
                endpoint=("2001:db8::1", 4500),
                allowed_ips=(ip_network("10.1.0.1/32"),),
            ),
        ),
    )


def test_zero_keys_mean_none_for_the_engine() -> None:
    zero = b64(bytes(32))
    text = (
        f"[Interface]\nPrivateKey = {zero}\n"
        f"[Peer]\nPublicKey = {b64(PUB1)}\nPresharedKey = {zero}\n"
    )
    dev = parse_config(text).to_device_config()
    assert dev.private_key is None and dev.peers[0].preshared_key is None


# --- wg-quick ---------------------------------------------------------------------------------

QUICK = f"""\
[Interface]
Address = 10.0.0.1/24, fd00::1/64
Address = 10.0.1.1
DNS = 1.1.1.1, 2606:4700:4700::1111, example.com,corp.example
MTU = 1420
Table = off
PreUp = echo pre up
PostUp = iptables -A FORWARD -i %i -j ACCEPT; iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE
PostUp = sysctl -w net.ipv4.ip_forward=1 # comment goes
PreDown = true
PostDown = echo  two  spaces
SaveConfig = True
PrivateKey = {b64(PRIV)}
ListenPort = 51820

[Peer]
PublicKey = {b64(PUB1)}
AllowedIPs = 0.0.0.0/0, ::/0
Endpoint = vpn.example.com:51820
"""


def test_wg_quick_keys_are_kept_for_up_and_down() -> None:
    c = parse_config(QUICK, "wg0.conf", wg_quick=True)
    assert c.quick == WgQuickSettings(
        addresses=(
            ip_interface("10.0.0.1/24"),
            ip_interface("fd00::1/64"),
            ip_interface("10.0.1.1"),
        ),
        dns=("1.1.1.1", "2606:4700:4700::1111"),
        dns_search=("example.com", "corp.example"),
        mtu=1420,
        table="off",
        pre_up=("echo pre up",),
        post_up=(
            "iptables -A FORWARD -i %i -j ACCEPT; iptables -t nat -A POSTROUTING -o eth0 -j "
            "MASQUERADE",
            "sysctl -w net.ipv4.ip_forward=1",
        ),
        pre_down=("true",),
        post_down=("echo  two  spaces",),
        save_config=True,
    )
    assert c.interface == InterfaceSection(PRIV, 51820, None)
    assert c.peers[0].endpoint == EndpointSpec("vpn.example.com", 51820)
    assert c.strip() == parse_config(strip_wg_quick(QUICK))


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("SaveConfig = yes", "wg0.conf:2: SaveConfig: `yes' is neither true nor false"),
        ("MTU = big", "wg0.conf:2: MTU: `big' is not a number"),
        (
            "Address = 10.0.0.1/24, 10.0.0.300",
            "wg0.conf:2: Address: `10.0.0.300' is not an IP address with an optional "
            "/prefix length",
        ),
        ("Post Up = x", "wg0.conf:2: Line unrecognized: `PostUp=x'"),
    ],
)
def test_bad_wg_quick_values(line: str, expected: str) -> None:
    assert errors_of(f"[Interface]\n{line}\n", wg_quick=True) == expected


def test_wg_quick_keys_belong_to_the_interface_section() -> None:
    assert errors_of(f"[Peer]\nPublicKey = {b64(PUB1)}\nDNS = 1.1.1.1\n", wg_quick=True) == (
        "wg0.conf:3: DNS: unknown key in [Peer]"
    )


def test_strip_drops_wg_quick_keys_and_trims_lines() -> None:
    text = (
        "  [Interface]  \n"
        "# comment\n"
        "PrivateKey = k # trailing\n"
        "Address = 10.0.0.1/24\n"
        "\tmtu=1420\n"
        "[Peer]\n"
        "Address = 1.2.3.4\r\n"
        "[interface]\n"
        "PreDown=x\n"
        "Address\n"
        "last line"
    )
    assert strip_wg_quick(text) == (
        "[Interface]\n# comment\nPrivateKey = k # trailing\n[Peer]\nAddress = 1.2.3.4\r\n"
        "[interface]\nlast line\n\n"
    )
    with pytest.raises(ValueError, match="neither true nor false"):
        strip_wg_quick("[Interface]\nSaveConfig = maybe\n")


def test_strip_is_byte_for_byte_wg_quick_strip(tmp_path: Path) -> None:
    exe = shutil.which("wg-quick")
    if exe is None or os.geteuid() != 0:
        pytest.skip("needs wg-quick and root (wg-quick strip re-executes itself with sudo)")
    text = QUICK + "  # indented comment\n[Peer]\nPublicKey = x\r\nDNS = 9.9.9.9\nlast"
    conf = tmp_path / "wsq0.conf"
    conf.write_bytes(text.encode())
    conf.chmod(0o600)
    res = subprocess.run([exe, "strip", str(conf)], capture_output=True, timeout=30, check=True)
    assert strip_wg_quick(text).encode() == res.stdout


# --- rendering -----------------------------------------------------------------------------


def test_format_is_the_showconf_layout() -> None:
    c = parse_config(FULL)
    assert format_config(c) == (
        "[Interface]\n"
        "ListenPort = 51820\n"
        "FwMark = 0x1234\n"
        f"PrivateKey = {b64(PRIV)}\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {b64(PUB1)}\n"
        f"PresharedKey = {b64(PSK)}\n"
        "AllowedIPs = 10.0.0.0/24, fd00::/64\n"
        "Endpoint = 192.0.2.1:51820\n"
        "PersistentKeepalive = 25\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {b64(PUB2)}\n"
        "AllowedIPs = 10.1.0.1/32\n"
        "Endpoint = [2001:db8::1]:4500\n"
    )
    assert format_config(Config()) == "[Interface]\n\n"


def test_wg_quick_keys_come_first_as_wg_quick_save_writes_them() -> None:
    text = format_config(parse_config(QUICK, wg_quick=True))
    assert text.startswith(
        "[Interface]\nAddress = 10.0.0.1/24\nAddress = fd00::1/64\nAddress = 10.0.1.1/32\n"
        "DNS = 1.1.1.1, 2606:4700:4700::1111, example.com, corp.example\nMTU = 1420\n"
        "Table = off\nSaveConfig = true\nPreUp = echo pre up\n"
    )
    assert "ListenPort = 51820\n" in text


@pytest.mark.parametrize(
    "text",
    [
        FULL,
        QUICK,
        "[Interface]\nListenPort = 0\nFwMark = off\n",
        f"[Peer]\nPublicKey = {b64(PUB1)}\nPersistentKeepalive = off\n"
        f"PresharedKey = {b64(bytes(32))}\n",
        f"[Peer]\nPublicKey = {b64(PUB1)}\nAllowedIPs = +10.0.0.0/8, -10.1.0.0/16\n",
        f"[Peer]\nPublicKey = {b64(PUB1)}\nAllowedIPs = -10.1.0.0/16\n",
        f"[Peer]\nPublicKey = {b64(PUB1)}\nEndpoint = [fe80::1%eth0]:5\n"
        f"[Peer]\nPublicKey = {b64(PUB1)}\n",
    ],
)
def test_round_trip(text: str) -> None:
    c = parse_config(text, wg_quick=True)
    again = parse_config(format_config(c), wg_quick=True)
    assert again == c
    assert format_config(again) == format_config(c)
