"""The node's HTTP faces: the local API on loopback (and, later, the share API on the LAN)."""
