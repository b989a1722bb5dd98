"""etcd for several managers: the client (mutual TLS), the embedded member the daemon
supervises, and the certificates both use (docs/ha.md)."""
