"""Linux I/O for the engine: TUN devices, UDP sockets, the configuration socket."""
