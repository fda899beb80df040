"""The sans-IO WireGuard protocol: no sockets, no files, no clock inside."""
