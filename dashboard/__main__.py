"""``python -m dashboard [--experiment NAME] [--artifacts DIR] [--port 8501]``: serve the dashboard on 127.0.0.1.

The launcher passes ``--server.address 127.0.0.1`` explicitly, so the dashboard stays local whatever
configuration files or working directory are in play (``dashboard/.streamlit/config.toml`` does the same for a
plain ``streamlit run``). Exposing it on a network is a deliberate ``--address 0.0.0.0``; the app then warns on
screen that anyone who can reach the machine can browse the experiment's images.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"


def streamlit_argv(port: int = 8501, address: str = "127.0.0.1") -> list[str]:
    """The ``streamlit run`` command line (also used by the browser tests and ``make screenshots``)."""
    return [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", address, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false"]


def main(argv: list[str] | None = None) -> int:
    prog = "histocompare dashboard" if os.environ.get("HISTOCOMPARE_PROG") else "python -m dashboard"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", help="experiment to open first (default: $HISTOCOMPARE_EXPERIMENT or demo)")
    parser.add_argument("--artifacts", help="artifacts folder holding the experiments (default: ./artifacts of the project)")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--address", default="127.0.0.1", help="listen address; anything but 127.0.0.1 exposes the images")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    if args.experiment:
        env["HISTOCOMPARE_EXPERIMENT"] = args.experiment
    if args.artifacts:
        env["HISTOCOMPARE_ARTIFACTS"] = str(Path(args.artifacts).resolve())
    if args.address not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.address}: anyone who can reach this machine can browse the experiment's images",
              file=sys.stderr)
    print(f"histocompare dashboard: http://{args.address}:{args.port}", flush=True)
    argv_ = streamlit_argv(args.port, args.address)
    os.execve(argv_[0], argv_, env)  # replace this process: Ctrl-C and signals go straight to Streamlit
    return 0  # pragma: no cover


if __name__ == "__main__":
    raise SystemExit(main())
