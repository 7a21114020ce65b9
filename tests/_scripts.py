"""Test helpers for the stdlib scripts in scripts/ (they are not a package).

* ``load_script("ray_node")`` imports scripts/ray_node.py by path (cached).
* Run as a program, this file is a stand-in for the ``ray`` executable
  (``RAY_BIN="python3 tests/_scripts.py fake-ray"``): ``start --head`` listens on
  ``--node-ip-address``:``--port`` like a GCS would (and, given ``--ray-client-server-port``,
  answers there like a client server that names its node); every ``start --block`` blocks
  until SIGTERM.  Election tests need a head port that accepts TCP, not Ray itself.
"""

from __future__ import annotations

import importlib.util
import signal
import socket
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
THIS = Path(__file__).resolve()
_CACHE: Dict[str, ModuleType] = {}


CONTROL_SECRET = "test-control-secret-0123456789"  # CSLR_CONTROL_SECRET of the test stacks


def load_script(name: str) -> ModuleType:
    if str(SCRIPTS) not in sys.path:  # the scripts import their shared cslr_control.py, as when run
        sys.path.insert(0, str(SCRIPTS))
    if name not in _CACHE:
        spec = importlib.util.spec_from_file_location(f"cslr_script_{name}", SCRIPTS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up by name
        spec.loader.exec_module(module)
        _CACHE[name] = module
    return _CACHE[name]


def fake_ray_bin() -> str:
    return f"{sys.executable} {THIS} fake-ray"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _arg(args: List[str], name: str) -> Optional[str]:
    for a in args:
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def _client_server(ip: str, port: int) -> None:
    """Stands for the head's Ray client server: answers each message with ``IP:`` + the message,
    so a client going through the health service's proxy can tell which head it reached."""
    import threading

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((ip, port))
    srv.listen(64)

    def one(conn: socket.socket) -> None:
        with conn:
            try:
                while True:
                    data = conn.recv(4096)
                    if not data:
                        return
                    conn.sendall(ip.encode() + b":" + data)
            except OSError:
                return

    def serve() -> None:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()


def fake_ray(args: List[str]) -> int:
    if not args or args[0] != "start":
        return 0
    stop = {"flag": False}

    def _term(signum, frame):
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _term)
    sock = None
    ip = _arg(args, "--node-ip-address") or "127.0.0.1"
    if "--head" in args:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ip, int(_arg(args, "--port") or 6379)))
        sock.listen(64)
        sock.settimeout(0.2)
        if _arg(args, "--ray-client-server-port"):
            _client_server(ip, int(_arg(args, "--ray-client-server-port")))
    while not stop["flag"]:
        if sock is None:
            time.sleep(0.1)
            continue
        try:
            conn, _ = sock.accept()
            conn.close()
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "fake-ray":
        sys.exit(fake_ray(sys.argv[2:]))
    sys.exit(2)
