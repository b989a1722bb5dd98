"""The cluster CA: root certificate, node certificates, join tokens."""
