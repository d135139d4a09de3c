"""``python -m agg.probe``: the container health check, exit 0 if healthy, else 1.

With no argument: ``GET /health`` on this host's HTTP front, at the port of
the configuration (``AGG_HTTP_PORT``, the file, or the default), so that a
changed port does not leave the check knocking at 8080. ``--path /livez``
asks another route. With ``--tcp PORT``: whether something listens on that
port of 127.0.0.1 (the stats process and the workers, which speak ZeroMQ, in
their own containers). It prints one line and never a traceback.
"""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.error
import urllib.request
from typing import Optional, Sequence

from . import config as configmod


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agg.probe", description=__doc__.split("\n")[0])
    parser.add_argument("--tcp", type=int, metavar="PORT", help="check a TCP listener instead")
    parser.add_argument("--path", default="/health", help="HTTP route to ask [/health]")
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    if args.tcp is not None:
        try:
            socket.create_connection(("127.0.0.1", args.tcp), args.timeout).close()
        except OSError as exc:
            print(f"unhealthy: nothing listens on 127.0.0.1:{args.tcp} ({exc.strerror or exc})")
            return 1
        print(f"healthy: 127.0.0.1:{args.tcp} listens")
        return 0
    try:
        port = configmod.load().http.port
    except configmod.ConfigError as exc:
        print(f"unhealthy: config error: {exc}")
        return 1
    url = f"http://127.0.0.1:{port}{args.path}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {url}: {getattr(exc, 'reason', exc)}")
        return 1
    print(f"{'healthy' if status == 200 else 'unhealthy'}: {url} answered {status}")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
