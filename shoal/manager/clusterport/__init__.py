"""The cluster port (default 2377): manager↔agent traffic, always mutual TLS."""
