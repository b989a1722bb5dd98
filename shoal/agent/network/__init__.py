"""The node's side of swarm networks: what the manager says the node's tasks attach to
(`state.py`), the kernel plumbing that connects them (namespaces, bridges, VXLAN), and
the DNS resolver every task asks."""
