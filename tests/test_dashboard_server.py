"""Issue #12: the dashboard listens on 127.0.0.1 only, wherever it is started from: a plain `streamlit run
/abs/path/dashboard/app.py` started outside the project (dashboard/.streamlit/config.toml) and `python -m dashboard`.
Checked on real processes, from the kernel's table of listening sockets."""

import socket
import sys
from contextlib import ExitStack
from pathlib import Path

from conftest import PROJECT_ROOT

from tools.live import free_port, serve

APP = PROJECT_ROOT / "dashboard" / "app.py"


def listening_addresses(port: int) -> set[str]:
    """Addresses with a LISTEN socket on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:
                continue
            if len(address) == 8:
                found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
            else:
                words = [bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, 32, 8)]
                found.add(socket.inet_ntop(socket.AF_INET6, b"".join(words)))
    return found


def test_the_dashboard_listens_on_loopback_only_wherever_it_is_started(tmp_path, dashboard_artifacts):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    plain_port, launcher_port = free_port(), free_port()
    plain = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(plain_port), "--server.headless", "true",
             "--browser.gatherUsageStats", "false"]  # no --server.address: the script-level config must decide
    launcher = [sys.executable, "-m", "dashboard", "--port", str(launcher_port), "--artifacts", str(dashboard_artifacts)]
    with ExitStack() as stack:
        stack.enter_context(serve(dashboard_artifacts, "fixture", cwd=elsewhere, argv=plain, port=plain_port))
        stack.enter_context(serve(dashboard_artifacts, "fixture", cwd=elsewhere, argv=launcher, port=launcher_port))
        assert listening_addresses(plain_port) == {"127.0.0.1"}
        assert listening_addresses(launcher_port) == {"127.0.0.1"}
