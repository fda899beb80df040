"""wireproxy's configuration format: what parses (and into what), what fails, and where.

The expected behaviour is wireproxy's (`config.go`, as of windtf/wireproxy 2026-07) read
through go-ini v1.67 with Insensitive, AllowShadows and AllowNonUniqueSections; the
differences we chose are listed in `wiresnake.proxy.config`'s docstring and tested here too.
"""

from __future__ import annotations

import base64
import textwrap
from ipaddress import ip_address, ip_interface, ip_network
from pathlib import Path

import pytest

from wiresnake.config import ConfigError, EndpointSpec
from wiresnake.protocol.settings import DeviceConfig, PeerConfig
from wiresnake.proxy.config import (
    DEFAULT_ALLOWED_IPS,
    HTTPProxy,
    ProxyConfig,
    ProxyConfigError,
    ProxyInterface,
    ProxyPeer,
    ResolveSettings,
    SNIProxy,
    Socks5Proxy,
    STDIOTunnel,
    TCPClientTunnel,
    TCPServerTunnel,
    Tunnels,
    UDPProxyTunnel,
    parse_proxy_config,
    read_proxy_config,
)


def key(n: int) -> bytes:
    return bytes([n]) * 32


def b64(k: bytes) -> str:
    return base64.b64encode(k).decode()


PRIV, PUB1, PUB2, PSK = key(0x40), key(1), key(2), key(3)
EP = EndpointSpec


def conf(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def parse(text: str, env: dict[str, str] | None = None, path: str = "f.conf") -> ProxyConfig:
    return parse_proxy_config(conf(text), path, env={} if env is None else env)


def error(text: str, env: dict[str, str] | None = None, path: str = "f.conf") -> str:
    with pytest.raises(ProxyConfigError) as info:
        parse(text, env, path)
    return str(info.value)


MINIMAL = f"[Interface]\nPrivateKey = {b64(PRIV)}\n[Peer]\nPublicKey = {b64(PUB1)}\n"


# ---------------------------------------------------------------------------------------
# wireproxy's README examples, written out with real keys


def test_readme_sample_config() -> None:
    c = parse(
        """
        # The [Interface] and [Peer] configurations follow the same semantics and meaning
        # of a wg-quick configuration.
        [Interface]
        Address = 10.200.200.2/32 # The subnet should be /32 and /128 for IPv4 and v6
        # MTU = 1420 (optional)
        PrivateKey = uCTIK+56CPyCvwJxmU5dBfuyJvPuSXAq1FzHdnIxe1Q=
        # PrivateKey = $MY_WIREGUARD_PRIVATE_KEY # Alternatively, reference environment variables
        DNS = 10.200.200.1

        [Peer]
        PublicKey = QP+A67Z2UBrMgvNIdHv8gPel5URWNLS4B3ZQ2hQIZlg=
        # PresharedKey = UItQuvLsyh50ucXHfjF0bbR4IIpVBd74lwKc8uIPXXs= (optional)
        Endpoint = my.ddns.example.com:51820
        # PersistentKeepalive = 25 (optional)

        # TCPClientTunnel is a tunnel listening on your machine,
        [TCPClientTunnel]
        BindAddress = 127.0.0.1:25565
        Target = play.cubecraft.net:25565

        [TCPServerTunnel]
        ListenPort = 3422
        Target = localhost:25545

        [STDIOTunnel]
        Target = ssh.myserver.net:22

        [Socks5]
        BindAddress = 127.0.0.1:25344
        #Username = ...
        # Avoid using spaces in the password field
        #Password = ...

        [http]
        BindAddress = 127.0.0.1:25345
        #CertFile = ...
        #KeyFile = ...

        [SNI]
        BindAddress = 0.0.0.0:443
        """
    )
    assert c.interface == ProxyInterface(
        private_key=base64.b64decode("uCTIK+56CPyCvwJxmU5dBfuyJvPuSXAq1FzHdnIxe1Q="),
        addresses=(ip_interface("10.200.200.2/32"),),
        dns=(ip_address("10.200.200.1"),),
        mtu=1420,
        listen_port=None,
        check_alive=(),
        check_alive_interval=5,
    )
    assert c.peers == (
        ProxyPeer(
            public_key=base64.b64decode("QP+A67Z2UBrMgvNIdHv8gPel5URWNLS4B3ZQ2hQIZlg="),
            endpoint=EP("my.ddns.example.com", 51820),
            allowed_ips=(ip_network("0.0.0.0/0"), ip_network("::/0")),
        ),
    )
    assert c.tunnels == Tunnels(
        tcp_client=(TCPClientTunnel(EP("127.0.0.1", 25565), EP("play.cubecraft.net", 25565)),),
        tcp_server=(TCPServerTunnel(3422, EP("localhost", 25545)),),
        stdio=(STDIOTunnel(EP("ssh.myserver.net", 22)),),
    )
    assert c.socks5 == (Socks5Proxy(EP("127.0.0.1", 25344)),)
    assert c.http == (HTTPProxy(EP("127.0.0.1", 25345)),)
    assert not c.http[0].tls
    assert c.sni == (SNIProxy(EP("0.0.0.0", 443)),)
    assert c.resolve == ResolveSettings("auto")
    assert c.warnings == ()


def test_readme_multiple_peers_udp_and_resolve() -> None:
    c = parse(
        f"""
        [Interface]
        Address = 10.254.254.40/32
        PrivateKey = {b64(PRIV)}

        [Peer]
        Endpoint = 192.168.0.204:51820
        PublicKey = {b64(PUB1)}
        AllowedIPs = 10.254.254.100/32
        PersistentKeepalive = 25

        [Peer]
        PublicKey = {b64(PUB2)}
        AllowedIPs = 10.254.254.1/32, fdee:1337:c000:d00d::1/128
        Endpoint = 172.16.0.185:44044
        PersistentKeepalive = 25


        [TCPServerTunnel]
        ListenPort = 5000
        Target = service-one.servicenet:5000

        [TCPServerTunnel]
        ListenPort = 5001
        Target = service-two.servicenet:5001

        [TCPServerTunnel]
        ListenPort = 5080
        Target = service-three.servicenet:80

        [UDPProxyTunnel]
        BindAddress = 127.0.0.1:53
        Target = 1.1.1.1:53
        InactivityTimeout = 30 # If its set to 0, it will never timeout

        [Resolve]
        # Set DNS Resovle Strategy
        ResolveStrategy = auto\x20
        """
    )
    assert c.peers == (
        ProxyPeer(PUB1, None, EP("192.168.0.204", 51820), (ip_network("10.254.254.100/32"),), 25),
        ProxyPeer(
            PUB2,
            None,
            EP("172.16.0.185", 44044),
            (ip_network("10.254.254.1/32"), ip_network("fdee:1337:c000:d00d::1/128")),
            25,
        ),
    )
    assert c.tunnels.tcp_server == (
        TCPServerTunnel(5000, EP("service-one.servicenet", 5000)),
        TCPServerTunnel(5001, EP("service-two.servicenet", 5001)),
        TCPServerTunnel(5080, EP("service-three.servicenet", 80)),
    )
    assert c.tunnels.udp_proxy == (UDPProxyTunnel(EP("127.0.0.1", 53), EP("1.1.1.1", 53), 30),)
    assert c.resolve.strategy == "auto"
    assert c.resolve_strategy == "ipv4"  # the interface has IPv4 addresses only


def test_readme_peers_connecting_to_us() -> None:
    c = parse(
        f"""
        [Interface]
        ListenPort = 5400
        PrivateKey = {b64(PRIV)}

        [Peer]
        PublicKey = {b64(PUB1)}
        AllowedIPs = 10.254.254.100/32
        # Note there is no Endpoint defined here.
        """
    )
    assert c.interface.listen_port == 5400
    assert c.peers[0].endpoint is None
    dev = c.to_device_config()
    assert dev.listen_port == 5400
    assert dev.peers[0].endpoint is None


def test_readme_health_check() -> None:
    c = parse(
        f"""
        [Interface]
        PrivateKey = {b64(PRIV)}
        Address = 10.2.0.2/32
        DNS = 10.2.0.1
        CheckAlive = 1.1.1.1, 3.3.3.3
        CheckAliveInterval = 3

        [Peer]
        PublicKey = {b64(PUB1)}
        AllowedIPs = 0.0.0.0/0
        Endpoint = 149.34.244.174:51820

        [Socks5]
        BindAddress = 127.0.0.1:25344
        """
    )
    assert c.interface.check_alive == (ip_address("1.1.1.1"), ip_address("3.3.3.3"))
    assert c.interface.check_alive_interval == 3
    assert c.peers[0].allowed_ips == (ip_network("0.0.0.0/0"),)


def test_readme_wgconfig_import(tmp_path: Path) -> None:
    (tmp_path / "wg0.conf").write_text(
        conf(
            f"""
            [Interface]
            PrivateKey = {b64(PRIV)}
            Address = 10.0.0.2/24, fd00::2/64
            DNS = 10.0.0.1
            MTU = 1380

            [Peer]
            PublicKey = {b64(PUB1)}
            PresharedKey = {b64(PSK)}
            Endpoint = [2001:db8::1]:51820
            AllowedIPs = 0.0.0.0/0, ::/0
            """
        )
    )
    main = tmp_path / "wireproxy.conf"
    main.write_text(
        conf(
            """
            WGConfig = wg0.conf

            # Same semantics as above
            [TCPClientTunnel]
            BindAddress = 127.0.0.1:8022
            Target = 10.0.0.1:22

            [Socks5]
            BindAddress = 127.0.0.1:1080
            """
        )
    )
    c = read_proxy_config(str(main), env={})
    assert c.wg_config == str(tmp_path / "wg0.conf")
    assert c.interface.addresses == (ip_interface("10.0.0.2/24"), ip_interface("fd00::2/64"))
    assert c.interface.mtu == 1380
    assert c.interface.source.path == str(tmp_path / "wg0.conf")
    assert c.peers == (
        ProxyPeer(
            PUB1, PSK, EP("2001:db8::1", 51820), (ip_network("0.0.0.0/0"), ip_network("::/0"))
        ),
    )
    assert c.tunnels.tcp_client == (TCPClientTunnel(EP("127.0.0.1", 8022), EP("10.0.0.1", 22)),)
    assert c.socks5[0].bind == EP("127.0.0.1", 1080)
    assert c.resolve_strategy == "ipv6"  # auto, and the interface has an IPv6 address


# ---------------------------------------------------------------------------------------
# Every key, and the defaults


def test_defaults() -> None:
    c = parse(MINIMAL)
    i = c.interface
    assert (i.addresses, i.dns, i.mtu, i.listen_port, i.check_alive, i.check_alive_interval) == (
        (),
        (),
        1420,
        None,
        (),
        5,
    )
    p = c.peers[0]
    assert (p.preshared_key, p.endpoint, p.persistent_keepalive) == (None, None, 0)
    assert p.allowed_ips == DEFAULT_ALLOWED_IPS == (ip_network("0.0.0.0/0"), ip_network("::/0"))
    assert c.tunnels == Tunnels()
    assert (c.socks5, c.http, c.sni, c.resolve) == ((), (), (), ResolveSettings("auto"))


def test_every_interface_key() -> None:
    c = parse(
        f"""
        [Interface]
        Address = 10.0.0.2, 10.0.0.3/24 ,fd00::2/64, fd00::3,
        PrivateKey = {b64(PRIV)}
        DNS = 1.1.1.1, 2606:4700:4700::1111
        MTU = 1280
        ListenPort = 51820
        CheckAlive = 10.0.0.1, fd00::1
        CheckAliveInterval = 10
        [Peer]
        PublicKey = {b64(PUB1)}
        """
    )
    i = c.interface
    assert i.private_key == PRIV
    assert i.addresses == tuple(
        map(ip_interface, ["10.0.0.2/32", "10.0.0.3/24", "fd00::2/64", "fd00::3/128"])
    )
    assert i.dns == (ip_address("1.1.1.1"), ip_address("2606:4700:4700::1111"))
    assert (i.mtu, i.listen_port, i.check_alive_interval) == (1280, 51820, 10)
    assert i.check_alive == (ip_address("10.0.0.1"), ip_address("fd00::1"))


def test_every_peer_key() -> None:
    c = parse(
        f"""
        [Interface]
        PrivateKey = {b64(PRIV)}
        [Peer]
        PublicKey = {b64(PUB1)}
        PresharedKey = {b64(PSK)}
        Endpoint = VPN.Example.COM:51820
        AllowedIPs = 10.0.0.0/8, 192.168.1.77/24
        PersistentKeepalive = 25
        """
    )
    assert c.peers == (
        ProxyPeer(
            PUB1,
            PSK,
            EP("vpn.example.com", 51820),  # wireproxy lower-cases the endpoint
            (ip_network("10.0.0.0/8"), ip_network("192.168.1.0/24")),  # host bits masked off
            25,
        ),
    )


@pytest.mark.parametrize(
    ("value", "endpoint"),
    [
        ("192.0.2.1:51820", EP("192.0.2.1", 51820)),
        ("[2001:db8::1]:51820", EP("2001:db8::1", 51820)),
        ("[fe80::1%eth0]:1", EP("fe80::1%eth0", 1)),
        ("[192.0.2.1]:2", EP("192.0.2.1", 2)),
        ("host.example:051820", EP("host.example", 51820)),
        ("h:0", EP("h", 0)),
        ("h:65535", EP("h", 65535)),
    ],
)
def test_endpoint_forms(value: str, endpoint: EndpointSpec) -> None:
    c = parse(MINIMAL + f"Endpoint = {value}\n")
    assert c.peers[0].endpoint == endpoint


def test_every_service_key() -> None:
    c = parse(
        MINIMAL
        + """
        [TCPClientTunnel]
        BindAddress = [::1]:2222
        Target = [fd00::5]:22
        [UDPProxyTunnel]
        BindAddress = :5353
        Target = dns.internal:53
        [Socks5]
        BindAddress = 127.0.0.1:1080
        Username = alice
        Password = s3cret
        [http]
        BindAddress = 127.0.0.1:3128
        Username = bob
        Password = hunter2
        CertFile = /etc/ssl/proxy.crt
        KeyFile = /etc/ssl/proxy.key
        [Resolve]
        ResolveStrategy = ipv6
        """
    )
    assert c.tunnels.tcp_client == (TCPClientTunnel(EP("::1", 2222), EP("fd00::5", 22)),)
    assert c.tunnels.udp_proxy == (UDPProxyTunnel(EP("", 5353), EP("dns.internal", 53), 0),)
    assert c.socks5 == (Socks5Proxy(EP("127.0.0.1", 1080), "alice", "s3cret"),)
    h = c.http[0]
    assert h == HTTPProxy(
        EP("127.0.0.1", 3128), "bob", "hunter2", "/etc/ssl/proxy.crt", "/etc/ssl/proxy.key"
    )
    assert h.tls
    assert c.resolve.strategy == c.resolve_strategy == "ipv6"
    assert "hunter2" not in repr(c) and "s3cret" not in repr(c)


def test_repeatable_services_keep_file_order() -> None:
    c = parse(
        MINIMAL
        + """
        [Socks5]
        BindAddress = 127.0.0.1:1
        [http]
        BindAddress = 127.0.0.1:2
        [Socks5]
        BindAddress = 127.0.0.1:3
        [TCPClientTunnel]
        BindAddress = 127.0.0.1:4
        Target = a:1
        [TCPClientTunnel]
        BindAddress = 127.0.0.1:5
        Target = b:2
        [UDPProxyTunnel]
        BindAddress = 127.0.0.1:6
        Target = c:3
        [UDPProxyTunnel]
        BindAddress = 127.0.0.1:7
        Target = d:4
        """
    )
    assert [s.bind.port for s in c.socks5] == [1, 3]
    assert [h.bind.port for h in c.http] == [2]
    assert [t.target.host for t in c.tunnels.tcp_client] == ["a", "b"]
    assert [t.target.host for t in c.tunnels.udp_proxy] == ["c", "d"]


def test_bind_address_port_forms() -> None:
    c = parse(
        MINIMAL
        + """
        [Socks5]
        BindAddress = localhost:http
        [http]
        BindAddress = 127.0.0.1:
        [SNI]
        BindAddress = :+443
        """
    )
    assert c.socks5[0].bind == EP("localhost", 80)  # a service name, as Go's Listen takes
    assert c.http[0].bind == EP("127.0.0.1", 0)  # an empty port is any free port
    assert c.sni[0].bind == EP("", 443)


def test_target_port_as_strconv_atoi_reads_it() -> None:
    c = parse(MINIMAL + "[STDIOTunnel]\nTarget = h:+0022\n")
    assert c.tunnels.stdio[0].target == EP("h", 22)


def test_multiple_peers() -> None:
    c = parse(
        f"""
        [Interface]
        PrivateKey = {b64(PRIV)}
        [Peer]
        PublicKey = {b64(PUB1)}
        AllowedIPs = 10.1.0.0/16
        [Peer]
        PublicKey = {b64(PUB2)}
        AllowedIPs = 10.2.0.0/16
        [Peer]
        PublicKey = {b64(key(9))}
        """
    )
    assert [p.public_key for p in c.peers] == [PUB1, PUB2, key(9)]
    assert c.peers[2].allowed_ips == DEFAULT_ALLOWED_IPS
    assert [p.source.line for p in c.peers] == [3, 6, 9]


# ---------------------------------------------------------------------------------------
# go-ini's reading of lines


def test_names_are_case_insensitive() -> None:
    c = parse(
        f"""
        [INTERFACE]
        privatekey = {b64(PRIV)}
        mtu = 1400
        [peer]
        PUBLICKEY = {b64(PUB1)}
        [SOCKS5]
        bindaddress = 127.0.0.1:1080
        [HTTP]
        BINDADDRESS = 127.0.0.1:3128
        [resolve]
        resolvestrategy = ipv4
        """
    )
    assert c.interface.mtu == 1400
    assert len(c.socks5) == len(c.http) == 1
    assert c.resolve.strategy == "ipv4"


def test_comments_quotes_and_delimiters() -> None:
    c = parse(
        f"""
        ; a semicolon comment
          # an indented comment
        [Interface] # a comment after a header
        PrivateKey : {b64(PRIV)}
        Address = 10.0.0.2/32;10.0.0.3 is cut off here
        DNS = "1.1.1.1"
        [Peer]
        "PublicKey" = {b64(PUB1)}
        [Socks5]
        BindAddress = '127.0.0.1:1080'
        Username = `a#b;c`
        Password = \"\"\"p#w\"\"\"
        [http]
        BindAddress = 127.0.0.1:3128
        Password = "x#y"
        """
    )
    assert c.interface.addresses == (ip_interface("10.0.0.2/32"),)
    assert c.interface.dns == (ip_address("1.1.1.1"),)
    assert c.socks5[0].bind == EP("127.0.0.1", 1080)
    assert (c.socks5[0].username, c.socks5[0].password) == ("a#b;c", "p#w")
    assert c.http[0].password == '"x'  # go-ini cuts at `#` before it strips quotes


def test_continuation_lines() -> None:
    c = parse(
        f"""
        [Interface]
        PrivateKey = {b64(PRIV)}
        Address = 10.0.0.2/32, \\
                  10.0.0.3/32
        [Peer]
        PublicKey = {b64(PUB1)}
        """
    )
    assert c.interface.addresses == (ip_interface("10.0.0.2/32"), ip_interface("10.0.0.3/32"))


def test_multiline_backtick_value() -> None:
    c = parse(MINIMAL + "[Socks5]\nBindAddress = 127.0.0.1:1\nPassword = `one\ntwo`\nUsername=u\n")
    assert c.socks5[0].password == "one\ntwo"
    assert c.socks5[0].username == "u"


def test_byte_order_mark_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "c.conf"
    path.write_bytes(b"\xef\xbb\xbf" + conf(MINIMAL).replace("\n", "\r\n").encode())
    c = read_proxy_config(str(path), env={})
    assert c.interface.private_key == PRIV


def test_go_integer_literals() -> None:
    c = parse(
        f"""
        [Interface]
        PrivateKey = {b64(PRIV)}
        MTU = 0x5dc
        ListenPort = 0o144
        CheckAlive = 10.0.0.1
        CheckAliveInterval = 010
        [Peer]
        PublicKey = {b64(PUB1)}
        PersistentKeepalive = 2_5
        """
    )
    assert (c.interface.mtu, c.interface.listen_port, c.interface.check_alive_interval) == (
        1500,
        100,
        8,  # a leading 0 is octal in Go
    )
    assert c.peers[0].persistent_keepalive == 25


def test_interpolation() -> None:
    c = parse(
        f"""
        host = 127.0.0.1
        [Interface]
        PrivateKey = {b64(PRIV)}
        [Peer]
        PublicKey = {b64(PUB1)}
        [Socks5]
        port = 1080
        BindAddress = %(host)s:%(port)s
        """
    )
    assert c.socks5[0].bind == EP("127.0.0.1", 1080)


# ---------------------------------------------------------------------------------------
# $ENV


def test_env_whole_value() -> None:
    env = {
        "KEY": b64(PRIV),
        "PEER": b64(PUB1),
        "ADDR": "10.0.0.2/32, fd00::2/128",
        "BIND": "127.0.0.1:1080",
        "TARGET": "db:5432",
        "USER": "alice",
        "PASS": "pa ss",
        "IPS": "10.9.0.0/16",
        "STRATEGY": "ipv4",
    }
    c = parse(
        """
        [Interface]
        PrivateKey = $KEY
        Address = $ADDR
        [Peer]
        PublicKey = $PEER
        AllowedIPs = $IPS
        [Socks5]
        BindAddress = $BIND
        Username = $USER
        Password = $PASS
        [TCPClientTunnel]
        BindAddress = 127.0.0.1:5432
        Target = $TARGET
        [Resolve]
        ResolveStrategy = $STRATEGY
        """,
        env,
    )
    assert c.interface.private_key == PRIV
    assert c.interface.addresses == (ip_interface("10.0.0.2/32"), ip_interface("fd00::2/128"))
    assert c.peers[0].public_key == PUB1
    assert c.peers[0].allowed_ips == (ip_network("10.9.0.0/16"),)
    assert c.socks5 == (Socks5Proxy(EP("127.0.0.1", 1080), "alice", "pa ss"),)
    assert c.tunnels.tcp_client[0].target == EP("db", 5432)
    assert c.resolve.strategy == "ipv4"


def test_env_dollar_escape_and_literal_dollars() -> None:
    c = parse(
        MINIMAL
        + """
        [Socks5]
        BindAddress = 127.0.0.1:1080
        Username = $$USER
        Password = pa$word$$
        [http]
        BindAddress = 127.0.0.1:3128
        Password = $$$$
        """,
        {"USER": "not this"},
    )
    assert c.socks5[0].username == "$USER"  # `$$` at the start is one literal `$`
    assert c.socks5[0].password == "pa$word$$"  # only a value that starts with `$` expands
    assert c.http[0].password == "$$$"  # only the first `$$` is undone


def test_env_empty_value_is_used() -> None:
    c = parse(
        f"""
        [Interface]
        PrivateKey = {b64(PRIV)}
        DNS = $NONE
        [Peer]
        PublicKey = {b64(PUB1)}
        """,
        {"NONE": ""},
    )
    assert c.interface.dns == ()


def test_env_unset_is_an_error() -> None:
    text = """
        [Interface]
        PrivateKey = $WG_KEY
        [Peer]
        PublicKey = $PEER
        """
    assert error(text) == ("f.conf:2: PrivateKey: references unset environment variable `$WG_KEY'")


def test_env_not_expanded_where_wireproxy_does_not() -> None:
    env = {"PSK": b64(PSK), "EP": "1.2.3.4:5", "MTU": "1400", "WG": "x"}
    assert error(MINIMAL + "PresharedKey = $PSK\n", env) == (
        "f.conf:5: PresharedKey: not a key (44 characters of base64 ending in `=' are needed) "
        "(wireproxy expands no $ENV in PresharedKey)"
    )
    assert error(MINIMAL + "Endpoint = $EP\n", env).startswith(
        "f.conf:5: Endpoint: missing port in address `$ep'"
    )
    text = f"[Interface]\nPrivateKey = {b64(PRIV)}\nMTU = $MTU\n[Peer]\nPublicKey = {b64(PUB1)}\n"
    assert error(text, env) == (
        "f.conf:3: MTU: `$MTU' is not an integer (wireproxy expands no $ENV in MTU)"
    )


# ---------------------------------------------------------------------------------------
# WGConfig


def _wg_file(path: Path) -> None:
    path.write_text(
        conf(
            f"""
            [Interface]
            PrivateKey = {b64(PRIV)}
            Address = 10.0.0.2/32
            Table = off
            PostUp = iptables -A FORWARD -i %i -j ACCEPT
            PostUp = echo two
            FwMark = 0x1234
            [Peer]
            PublicKey = {b64(PUB1)}
            Endpoint = 192.0.2.1:51820
            """
        )
    )


def test_wgconfig_relative_to_the_including_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub").mkdir()
    _wg_file(tmp_path / "sub" / "wg0.conf")
    main = tmp_path / "proxy.conf"
    main.write_text("WGConfig = sub/wg0.conf\n[Socks5]\nBindAddress = 127.0.0.1:1080\n")
    monkeypatch.chdir("/")
    c = read_proxy_config(str(main), env={})
    assert c.wg_config == str(tmp_path / "sub" / "wg0.conf")
    assert c.interface.private_key == PRIV
    assert c.peers[0].endpoint == EP("192.0.2.1", 51820)
    # wg-quick's own keys are ignored with a warning naming the imported file's lines
    wg = str(tmp_path / "sub" / "wg0.conf")
    assert c.warnings == (
        f"{wg}:4: Table: ignored: a wg-quick key wireproxy has no use for",
        f"{wg}:5: PostUp: ignored: a wg-quick key wireproxy has no use for",
        f"{wg}:7: FwMark: ignored: a wg-quick key wireproxy has no use for",
    )


def test_wgconfig_absolute_path(tmp_path: Path) -> None:
    _wg_file(tmp_path / "wg0.conf")
    c = parse(f"WGConfig = {tmp_path / 'wg0.conf'}\n", path="/nowhere/proxy.conf")
    assert c.peers[0].public_key == PUB1


def test_wgconfig_missing_file_names_the_including_line(tmp_path: Path) -> None:
    main = tmp_path / "proxy.conf"
    main.write_text("# imports\n\nWGConfig = missing.conf\n")
    with pytest.raises(ProxyConfigError) as info:
        read_proxy_config(str(main), env={})
    assert str(info.value) == (
        f"{main}:3: WGConfig: cannot read `{tmp_path / 'missing.conf'}': No such file or directory"
    )


def test_wgconfig_errors_name_the_imported_file(tmp_path: Path) -> None:
    wg = tmp_path / "wg0.conf"
    wg.write_text(f"[Interface]\nPrivateKey = {b64(PRIV)}\nAddress = 10.0.0.300\n")
    with pytest.raises(ProxyConfigError) as info:
        parse(f"WGConfig = {wg}\n")
    assert str(info.value) == (
        f"{wg}:3: Address: `10.0.0.300' is not an IP address with an optional /prefix length"
    )


def test_wgconfig_beside_inline_device_is_refused(tmp_path: Path) -> None:
    _wg_file(tmp_path / "wg0.conf")
    text = f"WGConfig = {tmp_path / 'wg0.conf'}\n\n[Peer]\nPublicKey = {b64(PUB2)}\n"
    assert error(text) == (
        "f.conf:3: [Peer] beside WGConfig (line 1), which wireproxy would ignore: "
        "keep the device in one place"
    )


def test_wgconfig_file_with_services_is_refused(tmp_path: Path) -> None:
    wg = tmp_path / "wg0.conf"
    wg.write_text(conf(MINIMAL) + "[Socks5]\nBindAddress = 127.0.0.1:1\n")
    with pytest.raises(ProxyConfigError) as info:
        parse(f"WGConfig = {wg}\n")
    assert str(info.value) == (
        f"{wg}:5: [Socks5] in a WGConfig file: wireproxy reads only [Interface] and [Peer] from it"
    )


# ---------------------------------------------------------------------------------------
# Errors, each with its file and line


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # an unknown key, in a section and at the top
        (MINIMAL + "Endpiont = 1.2.3.4:5\n", "f.conf:5: Endpiont: unknown key in [Peer]"),
        ("Foo = 1\n" + MINIMAL, "f.conf:1: Foo: unknown key at the top of the file"),
        (
            "PrivateKey = x\n" + MINIMAL,
            "f.conf:1: PrivateKey: belongs in a section, not at the top of the file",
        ),
        # an unknown section, a repeated one that must be single
        (MINIMAL + "[Sock5]\nBindAddress = 1.2.3.4:5\n", "f.conf:5: unknown section `[Sock5]'"),
        (
            MINIMAL + f"[Interface]\nPrivateKey = {b64(PRIV)}\n",
            "f.conf:5: a second [Interface] (the first is on line 1)",
        ),
        (
            MINIMAL + "[Resolve]\n[Resolve]\n",
            "f.conf:6: a second [Resolve] (the first is on line 5)",
        ),
        (
            MINIMAL + "[STDIOTunnel]\nTarget = a:1\n[STDIOTunnel]\nTarget = b:2\n",
            "f.conf:7: a second [STDIOTunnel] (the first is on line 5)",
        ),
        # missing sections and required keys
        (
            f"[Peer]\nPublicKey = {b64(PUB1)}\n",
            "f.conf:2: no [Interface] section (wireproxy needs one)",
        ),
        (
            f"[Interface]\nPrivateKey = {b64(PRIV)}\n",
            "f.conf:2: no [Peer] section (wireproxy needs at least one)",
        ),
        (
            f"# x\n[Interface]\nAddress = 10.0.0.1\n[Peer]\nPublicKey = {b64(PUB1)}\n",
            "f.conf:2: [Interface] has no PrivateKey",
        ),
        (
            f"[Interface]\nPrivateKey = {b64(PRIV)}\n\n[Peer]\nEndpoint = 1.2.3.4:5\n",
            "f.conf:4: [Peer] has no PublicKey",
        ),
        (MINIMAL + "[STDIOTunnel]\n", "f.conf:5: [STDIOTunnel] has no Target"),
        (MINIMAL + "[Socks5]\nUsername = u\n", "f.conf:5: [Socks5] has no BindAddress"),
        (
            MINIMAL + "[TCPServerTunnel]\nTarget = a:1\n",
            "f.conf:5: [TCPServerTunnel] has no ListenPort",
        ),
        (MINIMAL + "[Socks5]\nBindAddress =\n", "f.conf:6: BindAddress: empty value"),
        # keys
        (
            f"[Interface]\nPrivateKey = {b64(PRIV)[:-2]}=\n[Peer]\nPublicKey = {b64(PUB1)}\n",
            "f.conf:2: PrivateKey: not a key (44 characters of base64 ending in `=' are needed)",
        ),
        (
            f"[Interface]\nPrivateKey = {b64(PRIV)}\n[Peer]\nPublicKey = abc=\n",
            "f.conf:4: PublicKey: `abc=' is not a key (44 characters of base64 ending in `=' "
            "are needed)",
        ),
        # addresses
        (
            MINIMAL.replace("[Peer]", "Address = 10.0.0.2/32, 10.0.0.256\n[Peer]"),
            "f.conf:3: Address: `10.0.0.256' is not an IP address with an optional /prefix length",
        ),
        (
            MINIMAL.replace("[Peer]", "Address = 10.0.0.2/255.255.255.0\n[Peer]"),
            "f.conf:3: Address: `10.0.0.2/255.255.255.0' is not an IP address with an optional "
            "/prefix length: bad prefix length `255.255.255.0'",
        ),
        (
            MINIMAL.replace("[Peer]", "DNS = 1.1.1.1, corp.example\n[Peer]"),
            "f.conf:3: DNS: `corp.example' is not an IP address "
            "(wireproxy takes addresses only, no search domains)",
        ),
        (
            MINIMAL.replace("[Peer]", "CheckAlive = 10.0.0.1/32\n[Peer]"),
            "f.conf:3: CheckAlive: `10.0.0.1/32' is not an IP address",
        ),
        (
            MINIMAL + "AllowedIPs = 10.0.0.1\n",
            "f.conf:5: AllowedIPs: `10.0.0.1' is not an IP prefix (address/length): no `/'",
        ),
        (
            MINIMAL + "AllowedIPs = 10.0.0.0/08\n",
            "f.conf:5: AllowedIPs: `10.0.0.0/08' is not an IP prefix (address/length): "
            "bad prefix length `08'",
        ),
        (
            MINIMAL + "AllowedIPs = fe80::%eth0/64\n",
            "f.conf:5: AllowedIPs: `fe80::%eth0/64' is not an IP prefix (address/length)",
        ),
        # ports and numbers
        (
            MINIMAL.replace("[Peer]", "ListenPort = 70000\n[Peer]"),
            "f.conf:3: ListenPort: 70000 is not a port in 0-65535",
        ),
        (
            MINIMAL.replace("[Peer]", "ListenPort = 51_820_\n[Peer]"),
            "f.conf:3: ListenPort: `51_820_' is not an integer",
        ),
        (
            MINIMAL.replace("[Peer]", "MTU = 1500 bytes\n[Peer]"),
            "f.conf:3: MTU: `1500 bytes' is not an integer",
        ),
        (
            MINIMAL.replace("[Peer]", "MTU = 40\n[Peer]"),
            "f.conf:3: MTU: 40 is not an MTU in 68-65535",
        ),
        (
            MINIMAL + "PersistentKeepalive = 65536\n",
            "f.conf:5: PersistentKeepalive: 65536 is not an interval in 0-65535 seconds",
        ),
        (
            MINIMAL + "[TCPServerTunnel]\nListenPort = -1\nTarget = a:1\n",
            "f.conf:6: ListenPort: -1 is not a port in 0-65535",
        ),
        (
            MINIMAL + "[Socks5]\nBindAddress = 127.0.0.1:65536\n",
            "f.conf:6: BindAddress: port out of range in `127.0.0.1:65536'",
        ),
        (
            MINIMAL + "[Socks5]\nBindAddress = 127.0.0.1:no-such-service\n",
            "f.conf:6: BindAddress: unknown port `no-such-service' in `127.0.0.1:no-such-service'",
        ),
        (
            MINIMAL + "[Socks5]\nBindAddress = 1080\n",
            "f.conf:6: BindAddress: missing port in address `1080'",
        ),
        (
            MINIMAL + "[UDPProxyTunnel]\nBindAddress = :53\nTarget = a:1\nInactivityTimeout = 1m\n",
            "f.conf:8: InactivityTimeout: `1m' is not an integer",
        ),
        # endpoints
        (
            MINIMAL + "Endpoint = 192.0.2.1\n",
            "f.conf:5: Endpoint: missing port in address `192.0.2.1'",
        ),
        (
            MINIMAL + "Endpoint = 2001:db8::1:51820\n",
            "f.conf:5: Endpoint: too many colons in address `2001:db8::1:51820' "
            "(put an IPv6 host in [])",
        ),
        (
            MINIMAL + "Endpoint = host:wireguard\n",
            "f.conf:5: Endpoint: port must be a number 0-65535 in `host:wireguard'",
        ),
        (MINIMAL + "Endpoint = :51820\n", "f.conf:5: Endpoint: no host in `:51820'"),
        (MINIMAL + "Endpoint =\n", "f.conf:5: Endpoint: missing port in address `'"),
        # targets
        (
            MINIMAL + "[TCPClientTunnel]\nBindAddress = :1\nTarget = example.com\n",
            "f.conf:7: Target: missing port in address `example.com'",
        ),
        (
            MINIMAL + "[TCPClientTunnel]\nBindAddress = :1\nTarget = example.com:http\n",
            "f.conf:7: Target: port must be a number 0-65535 in `example.com:http'",
        ),
        (
            MINIMAL + "[TCPServerTunnel]\nListenPort = 1\nTarget = :8080\n",
            "f.conf:7: Target: no host in `:8080'",
        ),
        (
            MINIMAL + "[STDIOTunnel]\nTarget = [::1:22\n",
            "f.conf:6: Target: missing `]' in address `[::1:22'",
        ),
        (
            MINIMAL + "[UDPProxyTunnel]\nBindAddress = :1\nTarget = ::1:53\n",
            "f.conf:7: Target: too many colons in address `::1:53' (put an IPv6 host in [])",
        ),
        (
            MINIMAL + "[STDIOTunnel]\nTarget = h:65536\n",
            "f.conf:6: Target: port must be a number 0-65535 in `h:65536'",
        ),
        # checks between keys
        (
            MINIMAL.replace("[Peer]", "CheckAliveInterval = 3\n[Peer]"),
            "f.conf:3: CheckAliveInterval: only valid when CheckAlive is set",
        ),
        (
            MINIMAL.replace("[Peer]", "CheckAlive = 1.1.1.1\nCheckAliveInterval = 0\n[Peer]"),
            "f.conf:4: CheckAliveInterval: 0 is not an interval of at least 1 second",
        ),
        (
            MINIMAL + "[Resolve]\nResolveStrategy = IPv4\n",
            "f.conf:6: ResolveStrategy: `IPv4' is none of auto, ipv4, ipv6 (lower case)",
        ),
        (
            MINIMAL + "[http]\nBindAddress = :1\nCertFile = c.pem\n",
            "f.conf:7: CertFile: needs KeyFile too (wireproxy would serve plain HTTP)",
        ),
        (
            MINIMAL + "[Socks5]\nBindAddress = :1\nPassword = pw\n",
            "f.conf:7: Password: without a Username, wireproxy's SOCKS5 asks for no "
            "authentication at all",
        ),
        (
            MINIMAL + f"[Peer]\nPublicKey = {b64(PUB1)}\n",
            "f.conf:6: PublicKey: a second [Peer] with this key (the first is on line 3)",
        ),
        (
            MINIMAL.replace("[Peer]", "MTU = 1400\nmtu = 1300\n[Peer]"),
            "f.conf:4: MTU: given again with another value (first on line 3); "
            "wireproxy would take the first, wg-quick the last",
        ),
        # lines go-ini cannot read
        (MINIMAL + "[Socks5\n", "f.conf:5: unclosed section: `[Socks5'"),
        (MINIMAL + "[]\n", "f.conf:5: empty section name"),
        (
            MINIMAL + "PersistentKeepalive\n",
            "f.conf:5: key-value delimiter not found: `PersistentKeepalive'",
        ),
        (MINIMAL + "= 25\n", "f.conf:5: empty key name: `= 25'"),
        (MINIMAL + "[Socks5]\nPassword = `open\n", "f.conf:6: missing closing quote"),
    ],
)
def test_errors(text: str, message: str) -> None:
    assert error(text) == message


def test_private_keys_are_never_echoed() -> None:
    bad = b64(PRIV)[:-2] + "!="  # 44 characters, not base64
    text = f"[Interface]\nPrivateKey = {bad}\n[Peer]\nPublicKey = {b64(PUB1)}\n"
    assert bad not in error(text)
    text = conf(MINIMAL) + f"PresharedKey = {bad}\n"
    assert bad not in error(text)


def test_key_with_unused_bits_set_is_read_as_go_reads_it() -> None:
    # wg refuses a key whose last character has unused low bits set; Go's base64 (and so
    # wireproxy) ignores them, and so do we
    loose = b64(PUB1)[:-2] + "F="
    c = parse(f"[Interface]\nPrivateKey = {b64(PRIV)}\n[Peer]\nPublicKey = {loose}\n")
    assert c.peers[0].public_key == PUB1


def test_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        parse("[Nope]\n")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ProxyConfigError) as info:
        read_proxy_config(str(tmp_path / "absent.conf"))
    assert str(info.value) == f"{tmp_path / 'absent.conf'}: No such file or directory"


# ---------------------------------------------------------------------------------------
# Lenient where wireproxy is, with a warning where we read more than it does


def test_repeated_list_keys_add_up_with_a_warning() -> None:
    c = parse(
        f"""
        [Interface]
        PrivateKey = {b64(PRIV)}
        Address = 10.0.0.2/32
        Address = fd00::2/128
        [Peer]
        PublicKey = {b64(PUB1)}
        AllowedIPs = 10.0.0.0/24
        AllowedIPs = 10.1.0.0/24
        """
    )
    assert c.interface.addresses == (ip_interface("10.0.0.2/32"), ip_interface("fd00::2/128"))
    assert c.peers[0].allowed_ips == (ip_network("10.0.0.0/24"), ip_network("10.1.0.0/24"))
    assert c.warnings == (
        "f.conf:4: Address: added to line 3's (wg-quick does; wireproxy reads only the first)",
        "f.conf:8: AllowedIPs: added to line 7's (wg-quick does; wireproxy reads only the first)",
    )


def test_a_repeated_key_with_the_same_value_is_fine() -> None:
    c = parse(MINIMAL + "PersistentKeepalive = 25\nPersistentKeepalive = 25\n")
    assert c.peers[0].persistent_keepalive == 25


def test_empty_allowed_ips_means_everything() -> None:
    c = parse(MINIMAL + "AllowedIPs =\n")
    assert c.peers[0].allowed_ips == DEFAULT_ALLOWED_IPS


def test_wg_quick_keys_in_the_inline_interface_are_ignored() -> None:
    c = parse(MINIMAL.replace("[Peer]", "SaveConfig = true\nPreUp = true\n[Peer]"))
    assert c.warnings == (
        "f.conf:3: SaveConfig: ignored: a wg-quick key wireproxy has no use for",
        "f.conf:4: PreUp: ignored: a wg-quick key wireproxy has no use for",
    )


def test_empty_resolve_section_is_auto() -> None:
    assert parse(MINIMAL + "[Resolve]\n").resolve.strategy == "auto"


# ---------------------------------------------------------------------------------------
# Onto the engine


def test_to_device_config() -> None:
    c = parse(
        f"""
        [Interface]
        PrivateKey = {b64(PRIV)}
        ListenPort = 51820
        [Peer]
        PublicKey = {b64(PUB1)}
        PresharedKey = {b64(PSK)}
        Endpoint = [2001:db8::1]:51820
        AllowedIPs = 10.0.0.0/8
        PersistentKeepalive = 25
        [Peer]
        PublicKey = {b64(PUB2)}
        PresharedKey = {b64(bytes(32))}
        Endpoint = Peer.Example:4500
        """
    )
    seen: list[EndpointSpec] = []

    def resolve(spec: EndpointSpec) -> tuple[str, int]:
        seen.append(spec)
        return "192.0.2.7", spec.port

    assert c.to_device_config(resolve) == DeviceConfig(
        private_key=PRIV,
        listen_port=51820,
        peers=(
            PeerConfig(PUB1, PSK, ("2001:db8::1", 51820), (ip_network("10.0.0.0/8"),), 25),
            PeerConfig(PUB2, None, ("192.0.2.7", 4500), DEFAULT_ALLOWED_IPS, 0),
        ),
    )
    assert seen == [EP("peer.example", 4500)]  # only names are resolved


def test_to_device_config_resolution_failure_names_the_endpoint_line() -> None:
    c = parse(MINIMAL + "Endpoint = nowhere.invalid:51820\n")

    def fail(spec: EndpointSpec) -> tuple[str, int]:
        raise ValueError(f"Name or service not known: `{spec}'")

    with pytest.raises(ProxyConfigError) as info:
        c.to_device_config(fail)
    assert str(info.value) == (
        "f.conf:5: Endpoint: Name or service not known: `nowhere.invalid:51820'"
    )


def test_a_prefix_of_two_peers_goes_to_the_later_one() -> None:
    c = parse(
        f"""
        [Interface]
        PrivateKey = {b64(PRIV)}
        [Peer]
        PublicKey = {b64(PUB1)}
        AllowedIPs = 10.0.0.0/24, 10.9.0.0/16
        [Peer]
        PublicKey = {b64(PUB2)}
        AllowedIPs = 10.9.0.0/16
        """
    )
    assert c.warnings == (
        "f.conf:8: AllowedIPs: 10.9.0.0/16 is also given to the [Peer] on line 3; "
        "the later peer gets it, as in wireguard-go",
    )
    dev = c.to_device_config()
    assert [p.allowed_ips for p in dev.peers] == [
        (ip_network("10.0.0.0/24"),),
        (ip_network("10.9.0.0/16"),),
    ]


def test_source_points_runtime_errors_at_lines() -> None:
    c = parse(MINIMAL + "[Socks5]\n\nBindAddress = 127.0.0.1:1080\n")
    s = c.socks5[0].source
    assert (s.path, s.line, s.line_of("BindAddress"), str(s)) == ("f.conf", 5, 7, "f.conf:5")
    assert str(s.error("BindAddress", "Address already in use")) == (
        "f.conf:7: BindAddress: Address already in use"
    )


def test_wgconfig_file_cannot_import_another(tmp_path: Path) -> None:
    wg = tmp_path / "wg0.conf"
    wg.write_text("WGConfig = other.conf\n" + conf(MINIMAL))
    with pytest.raises(ProxyConfigError) as info:
        parse(f"WGConfig = {wg}\n")
    assert str(info.value) == f"{wg}:1: WGConfig: a WGConfig file cannot import another"
