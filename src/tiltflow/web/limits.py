"""The viewer's limits: which Host it answers, how large a request body may be, which files it serves.

- Host: a browser page on another site that re-points its own name at 127.0.0.1 (DNS rebinding)
  sends its own name as ``Host``; only this machine's loopback names, the address the server
  listens on and the ``hosts`` given (``tiltflow view --host``) are answered (others: 400).
- Bodies over ``max_body`` bytes get 413 before they are read (the viewer's requests are tiny).
- Files: a file under the project folder is served only when it resolves inside it, so a symlink
  from the project to elsewhere is not followed; spectra must be files of the project.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})
MAX_BODY_BYTES = 1 << 20


def host_name(value: str) -> str:
    """``Host`` header -> its name, without port or IPv6 brackets, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value[1:]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


async def _reply(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    """ASGI middleware for the Host check and the body limit (outermost, before the token check)."""

    def __init__(self, app, *, hosts: Iterable[str] | None = None, max_body: int = MAX_BODY_BYTES):
        self.app = app
        self.hosts = LOOPBACK | {host_name(h) for h in hosts or ()}
        self.max_body = max_body

    def host_allowed(self, scope) -> bool:
        headers = dict(scope.get("headers") or [])
        if b"host" not in headers:  # not a browser (browsers always send one)
            return True
        server = host_name(str((scope.get("server") or ("",))[0] or ""))
        if server in ANY_ADDRESS or self.hosts & ANY_ADDRESS:
            return True  # listening on every address: the token protects it
        return host_name(headers[b"host"].decode("latin-1")) in self.hosts | {server}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not self.host_allowed(scope):
            return await _reply(
                send,
                400,
                "unknown Host — open the URL that `tiltflow view` printed "
                "(or start it with --host NAME to use another name)",
            )
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and not length.strip().isdigit():
            return await _reply(send, 400, "bad Content-Length")
        if length is not None and int(length) > self.max_body:
            return await _reply(send, 413, f"request body over {self.max_body} bytes")
        messages, size = [], 0
        while True:  # read (at most max_body bytes), then hand it on
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_body:
                return await _reply(send, 413, f"request body over {self.max_body} bytes")
            if not message.get("more_body"):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)


class NotServed(FileNotFoundError):
    """A file the viewer does not read (answered 404, skipped where views are summarised)."""


def served_path(root: Path, path: Path | str, *, inside_only: bool = False) -> Path:
    """``path`` if the viewer may read it: outside the project folder (an input the project refers
    to; NotServed with ``inside_only``), or inside it without leading out through a symlink."""
    p = Path(os.path.normpath(Path(path).absolute()))
    inside = p.is_relative_to(root) or p.is_relative_to(root.resolve())
    if inside and p.resolve().is_relative_to(root.resolve()):
        return p
    if not inside and not inside_only:
        return p
    what = "leads out of the project folder (a symlink)" if inside else "is not a file of the project"
    raise NotServed(f"{p.name}: {what} — not served")
