"""``tiltflow view``: the curation web viewer (TomoViewer + CTF viewer) on a local port."""

from __future__ import annotations

import click

from tiltflow.cli.output import console, echo_json, err_console, fail

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _free_port(host: str, wanted: int) -> int:
    """``wanted`` when it is free on ``host``, else any free port (0 asks for any)."""
    import socket

    for port in (wanted, 0) if wanted else (0,):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError(f"no free port on {host}")


def serve(app, host: str, port: int) -> None:  # pragma: no cover - blocks; tests patch it
    """Serve until Ctrl+C; OSError when ``host:port`` cannot be bound (uvicorn would log and exit)."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


@click.command("view")
@click.option("-p", "--project", default=".", show_default=True, help="Project folder.")
@click.option(
    "--port",
    type=int,
    default=8765,
    show_default=True,
    help="Port to listen on (another free one is used when it is taken; 0 = any).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind. Anything but 127.0.0.1 opens the viewer to your network (token still needed).",
)
@click.option("--no-browser", is_flag=True, help="Only print the URL; do not open a browser.")
@click.option("--json", "as_json", is_flag=True, help="Print the URL, host, port and project as JSON.")
def view_command(project: str, port: int, host: str, no_browser: bool, as_json: bool) -> None:
    """Open the project in the web viewer: browse runs, curate tilt series and CTF, save subsets.

    Prints a URL with a random token for this session; only requests carrying it are served.

    Examples: tiltflow view -p P; tiltflow view -p P --port 9000 --no-browser
    """
    import secrets
    import sys
    import threading
    import webbrowser

    from tiltflow.workflow.errors import ProjectError
    from tiltflow.workflow.store import ProjectStore

    if not 0 <= port <= 65535:
        fail([f"--port {port}: not a port — use 1-65535, or 0 for any free port"])
    try:
        store = ProjectStore(project, create=False)
    except ProjectError as err:
        fail([str(err)])
    try:
        from tiltflow.web.app import create_app
    except ModuleNotFoundError as err:
        fail([f"the viewer needs the web extra ({err.name} missing) — pip install 'tiltflow[web]'"])
    wanted = port
    try:
        port = _free_port(host, port)
    except (OSError, UnicodeError, ValueError) as err:
        fail([f"--host {host}: cannot listen there ({err}) — use an address of this machine"])
    if wanted and port != wanted:
        err_console.print(f"note: --port {wanted} is in use; using {port}", markup=False)
    token = secrets.token_urlsafe(24)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/?token={token}"
    if host not in LOOPBACK:
        err_console.print(
            f"warning: listening on {host}: anyone on your network who gets the URL can curate this project",
            markup=False,
        )
    if as_json:
        echo_json({"url": url, "host": host, "port": port, "project": str(store.root)})
        sys.stdout.flush()
    else:
        console.print(f"tiltflow viewer for {store.root}", markup=False)
        console.print(f"  {url}", markup=False)
        console.print("  (Ctrl+C to stop)", markup=False)
    browser = threading.Timer(1.0, webbrowser.open, (url,))  # a moment later, when the server listens
    if not no_browser:
        browser.start()
    try:
        serve(create_app(store, token, hosts=[host]), host, port)
    except OSError:  # taken since we looked
        browser.cancel()
        fail([f"--port {port}: cannot listen on {shown}:{port} (in use?) — choose another --port, or 0 for any"])
