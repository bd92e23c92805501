"""hive-failures queen install|uninstall: one entry in Hive's MCP registry, through Hive's own MCPRegistry."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from click.testing import CliRunner

from hive_otel_failures.faces.cli import app
from hive_otel_failures.faces.queen import install, uninstall

runner = CliRunner()


def installed(hive_home: Path) -> dict:
    return json.loads((hive_home / "mcp_registry" / "installed.json").read_text())["servers"]


def test_install_writes_a_local_stdio_entry_that_runs_this_python(tmp_path: Path, db_path: Path) -> None:
    message = install(str(db_path))
    assert "Registered MCP server 'hive-failures'" in message and "next session" in message
    assert "does not exist yet" in message  # no index at db_path so far
    entry = installed(tmp_path / "hive_home")["hive-failures"]
    assert (entry["source"], entry["transport"], entry["enabled"]) == ("local", "stdio", True)
    assert entry.get("mode", "tools") == "tools"  # aden-hive 1.0.1 writes no mode
    stdio = entry["manifest"]["stdio"]
    assert stdio["command"] == sys.executable
    assert stdio["args"] == ["-m", "hive_otel_failures", "mcp", "--db", str(db_path.resolve())]


def test_install_twice_keeps_one_updated_entry(tmp_path: Path, monkeypatch) -> None:
    install(str(tmp_path / "first.db"))
    monkeypatch.chdir(tmp_path)
    message = install("sqlite:///second.db", name="hive-failures")  # relative: made absolute here
    assert message.startswith("Updated")
    servers = installed(tmp_path / "hive_home")
    assert list(servers) == ["hive-failures"]
    assert servers["hive-failures"]["manifest"]["stdio"]["args"][-1] == str(tmp_path / "second.db")


def test_install_keeps_other_servers_and_uses_the_default_index(tmp_path: Path) -> None:
    install(name="other")
    message = install()
    servers = installed(tmp_path / "hive_home")
    assert sorted(servers) == ["hive-failures", "other"]
    default = str((tmp_path / "hive_home" / "failures.db").resolve())  # $HIVE_HOME/failures.db
    assert servers["hive-failures"]["manifest"]["stdio"]["args"][-1] == default and default in message


def test_uninstall_removes_it_and_is_clean_when_absent(tmp_path: Path, db_path: Path) -> None:
    hive_home = tmp_path / "hive_home"
    assert "nothing to remove" in uninstall()
    assert not hive_home.exists()  # a fresh HIVE_HOME is left alone
    install(str(db_path))
    assert "Removed MCP server 'hive-failures'" in uninstall()
    assert installed(hive_home) == {}
    assert "nothing to remove" in uninstall()


def test_cli_queen_install_and_uninstall(tmp_path: Path, db_path: Path) -> None:
    result = runner.invoke(app, ["queen", "install", "--db", str(db_path)])
    assert result.exit_code == 0, result.output
    assert "hive-failures" in result.output and "next" in result.output
    args = installed(tmp_path / "hive_home")["hive-failures"]["manifest"]["stdio"]["args"]
    assert args[-1] == str(db_path.resolve())
    result = runner.invoke(app, ["queen", "uninstall"])
    assert result.exit_code == 0 and "Removed" in result.output
    assert installed(tmp_path / "hive_home") == {}


def test_the_registered_command_starts_the_server(tmp_path: Path, db_path: Path) -> None:
    """The entry's command line, run as Hive runs it, from another directory: the server answers."""
    import subprocess
    import time

    install(str(db_path))
    stdio = installed(tmp_path / "hive_home")["hive-failures"]["manifest"]["stdio"]
    hello = [{"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-03-26", "capabilities": {},
                         "clientInfo": {"name": "test", "version": "0"}}},
             {"jsonrpc": "2.0", "method": "notifications/initialized"},
             {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}]
    # stdin stays open until the answer is read: a server may stop at end of input before it answers.
    with subprocess.Popen([stdio["command"], *stdio["args"]], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True, cwd="/", env=dict(os.environ)) as server:
        server.stdin.write("".join(json.dumps(m) + "\n" for m in hello))
        server.stdin.flush()
        replies = {}
        deadline = time.monotonic() + 60
        while 2 not in replies and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            message = json.loads(line)
            replies[message.get("id")] = message
        server.stdin.close()
        server.wait(timeout=30)
    assert len(replies[2]["result"]["tools"]) == 8
