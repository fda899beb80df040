"""The rootless proxy: WireGuard over a userspace network stack, with no TUN and no root.

Its configuration file is wireproxy's format (`wiresnake.proxy.config`): a WireGuard
`[Interface]` and `[Peer]`s (inline, or imported from a wg-quick file with `WGConfig`), and
the services to run over the tunnel: SOCKS5 and HTTP proxies, an SNI proxy, TCP tunnels in
either direction, UDP tunnels and a stdin/stdout tunnel.
"""
