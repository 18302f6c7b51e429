"""One environment variable carries the shared token to both ends: `edgedp serve` and a robot's policy.remote
read EDGEDP_SERVE_TOKEN (documented) and the older robot-side EDGEDP_REMOTE_TOKEN; two different tokens under
the two names is one line, exit 2. No Ray: every case stops at a check that runs after the token is read
(the server's next refusal; `edgedp check`'s health request to a closed port)."""
from __future__ import annotations

import socket

import pytest

pytest.importorskip("msgpack", reason="needs msgpack: pip install 'edgedp[serve]'")

from edgedp.errors import UserError  # noqa: E402

TOKEN = "test-token-0123456789abcdef"
NAMES = ("EDGEDP_SERVE_TOKEN", "EDGEDP_REMOTE_TOKEN")


@pytest.fixture(autouse=True)
def _no_token_env(monkeypatch):
    for name in (*NAMES, "MY_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def _serve_stderr(capsys, *argv: str) -> str:
    """`edgedp serve` with a bad backend: the backend is refused only after the token was found and checked."""
    from edgedp.cli import main

    assert main(["serve", "preset:small", "--backend", "nope", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _robot(tmp_path, capsys, **remote) -> str:
    """`edgedp check` on a robot config with policy.remote: its one error line (the server is not there)."""
    import yaml
    from example_configs import load_example

    from edgedp.cli import main

    data = load_example()
    data["policy"]["remote"] = {"url": f"http://127.0.0.1:{_closed_port()}", "timeout_ms": 200, **remote}
    path = tmp_path / "remote.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("name", NAMES)
def test_either_name_reaches_the_server_and_the_robot(name, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(name, "too-short")
    assert "at least 16 characters" in _serve_stderr(capsys)  # the server read it (and measured it)
    monkeypatch.setenv(name, TOKEN)
    assert "unknown backend" in _serve_stderr(capsys)
    assert "unreachable" in _robot(tmp_path, capsys)  # the robot read it and went on to ask the server


def test_no_token_names_the_documented_variable(capsys, tmp_path):
    line = _serve_stderr(capsys)
    assert "shared token is required" in line and "EDGEDP_SERVE_TOKEN" in line
    line = _robot(tmp_path, capsys)
    assert "shared token is required" in line and "EDGEDP_SERVE_TOKEN" in line


def test_both_names_with_different_tokens_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("EDGEDP_SERVE_TOKEN", TOKEN)
    monkeypatch.setenv("EDGEDP_REMOTE_TOKEN", TOKEN[::-1])
    for line in (_serve_stderr(capsys), _robot(tmp_path, capsys)):
        assert "EDGEDP_SERVE_TOKEN and EDGEDP_REMOTE_TOKEN are both set" in line and TOKEN not in line
    monkeypatch.setenv("EDGEDP_REMOTE_TOKEN", TOKEN)  # the same token under both names is fine
    assert "unknown backend" in _serve_stderr(capsys)
    assert "unreachable" in _robot(tmp_path, capsys)


def test_a_named_token_env_is_read_alone(monkeypatch, capsys, tmp_path):
    """policy.remote.token_env: MY_TOKEN means that variable only; the standard names do not leak in."""
    monkeypatch.setenv("EDGEDP_SERVE_TOKEN", TOKEN)
    line = _robot(tmp_path, capsys, token_env="MY_TOKEN")
    assert "shared token is required" in line and "MY_TOKEN" in line and "EDGEDP_SERVE_TOKEN" not in line
    monkeypatch.setenv("MY_TOKEN", "another-token-0123456789")
    assert "unreachable" in _robot(tmp_path, capsys, token_env="MY_TOKEN")
