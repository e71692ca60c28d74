"""Process helpers for the tests (the implementation is shared with the local stack)."""

from devstack.supervise import ManagedProcess, binary, free_port, http_ok, port_open, running

__all__ = ["ManagedProcess", "binary", "free_port", "http_ok", "port_open", "running"]
