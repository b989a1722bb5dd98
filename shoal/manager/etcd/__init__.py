"""etcd for several managers: the embedded member the daemon supervises and the
certificates it serves with (docs/ha.md). The client is shoal/etcdclient.py: the store
uses it too, and the store stays below the manager's components."""
