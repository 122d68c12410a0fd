"""Where a syslog listener listens: ``unix:/run/x.sock`` or ``udp://127.0.0.1:5140``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class Address:
    """Where to listen: ``unix:/run/x.sock`` or ``udp://127.0.0.1:5140``."""

    kind: str  # "unix" or "udp"
    path: str = ""
    host: str = ""
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> Address:
        if text.startswith("unix:"):
            path = text.removeprefix("unix:")
            if not path.startswith("/"):
                raise ValueError(f"{text}: a unix socket needs an absolute path (unix:/run/x.sock)")
            return cls("unix", path=path)
        if text.startswith("udp://"):
            hostport = text.removeprefix("udp://")
            host, sep, port = hostport.rpartition(":")
            host = host.strip("[]")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{text}: write udp://HOST:PORT (udp://127.0.0.1:5140)")
            return cls("udp", host=host, port=int(port))
        raise ValueError(f"{text}: write unix:/path/to.sock or udp://HOST:PORT")

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"udp://{host}:{self.port}"
