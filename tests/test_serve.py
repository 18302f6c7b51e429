"""Policy serving (edgedp serve, policy.remote) against a real local Ray Serve instance; no mocks.

One Ray instance per module (ray.init(num_cpus=1, include_dashboard=False)), started by the `served` fixture
and torn down in its finalizer (serve.shutdown, ray.shutdown). The served checkpoint is the one
examples/sim.yaml runs, so sim runs can point policy.remote at it. The wire-format and config checks need no
server and come first.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgedp.errors import UserError
from edgedp.serve import wire
from edgedp.serve.server import token_ok

ray = pytest.importorskip("ray", reason="needs ray[serve]: pip install 'edgedp[serve]'")

from example_configs import load_example  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sim.yaml"
TOKEN = "test-token-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(url: str, tmp_path: Path, **remote):
    from edgedp.config import parse_config

    data = load_example()
    data["rates"]["servo_hz"] = 250  # kinder to a shared 2-core machine; the logic is rate-independent
    data["safety"]["start_ramp_time"] = 0.5
    # Ray's own processes share the 2 cores with the servo emulator; a starved emulator is not what these tests
    # are about, so the bus watchdog gets more slack than the example's 10 ticks.
    data["safety"]["watchdog_failed_ticks"] = 250
    data["telemetry"]["live"] = False
    data["policy"]["remote"] = {"url": url, "token": TOKEN, "timeout_ms": 3000, **remote}
    return parse_config(data, base=EXAMPLE.parent)


# ------------------------------------------------------------------------------------------- wire format
def test_wire_round_trip_keeps_dtype_shape_and_values():
    obs = {"observation.image": np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5),
           "observation.state": np.linspace(-1, 1, 4, dtype=np.float32).reshape(2, 2)}
    noise = np.random.default_rng(1).standard_normal((16, 2)).astype(np.float32)
    got = wire.decode_request(wire.encode_request(obs, noise, {"n_fixed": np.array([3])}))
    for k, v in obs.items():
        assert got["obs"][k].dtype == v.dtype and np.array_equal(got["obs"][k], v)
    assert np.array_equal(got["noise"], noise)
    assert got["conditioning"]["n_fixed"].dtype == np.int64 and got["conditioning"]["n_fixed"].tolist() == [3]


def _array(dtype="<f4", shape=(2,), data=None):
    return {"dtype": dtype, "shape": list(shape), "data": data if data is not None else b"\0" * 8}


@pytest.mark.parametrize("message, needle", [
    (b"\xc1not msgpack", "not a msgpack message"),
    ({"v": 2, "obs": {}}, "v=1"),
    ({"v": 1, "obs": {}}, "non-empty map"),
    ({"v": 1, "obs": {"a": _array("|O")}}, "dtype '|O' not allowed"),
    ({"v": 1, "obs": {"a": _array(shape=(3,))}}, "do not match"),
    ({"v": 1, "obs": {"a": _array(shape=(-1,))}}, "non-negative"),
    ({"v": 1, "obs": {"a": _array(shape=[1] * 9)}}, "at most"),
    ({"v": 1, "obs": {"a": {"dtype": "<f4", "shape": [2]}}}, "keys dtype, shape, data"),
    ({"v": 1, "obs": {"a": _array(data="text")}}, "raw bytes"),
    ({"v": 1, "obs": {"a": _array()}, "code": b"x"}, "unknown key"),
    ({"v": 1, "obs": {"a": _array()}, "conditioning": {"evil": _array()}}, "conditioning"),
])
def test_malformed_payloads_are_refused_with_one_line(message, needle):
    import msgpack

    body = message if isinstance(message, bytes) else msgpack.packb(message, use_bin_type=True)
    with pytest.raises(wire.WireError) as err:
        wire.decode_request(body)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_msgpack_extension_types_and_oversize_bodies_are_refused():
    import msgpack

    ext = msgpack.packb({"v": 1, "obs": {"a": msgpack.ExtType(1, b"payload")}}, use_bin_type=True)
    with pytest.raises(wire.WireError, match="not a msgpack message"):
        wire.decode_request(ext)
    with pytest.raises(wire.WireError, match="allowed"):
        wire.decode_request(b"\0" * (wire.MAX_REQUEST_BYTES + 1))


def test_token_comparison():
    assert token_ok(f"Bearer {TOKEN}", TOKEN.encode())
    assert not token_ok(f"Bearer {TOKEN}x", TOKEN.encode())
    assert not token_ok(TOKEN, TOKEN.encode())  # no scheme
    assert not token_ok(None, TOKEN.encode())
    assert not token_ok("Basic " + TOKEN, TOKEN.encode())


def test_remote_url_is_validated_with_one_line(tmp_path):
    from edgedp.config import ConfigError

    with pytest.raises(ConfigError, match=r"policy.remote.url: expected http://HOST:PORT"):
        _cfg("ftp://host", tmp_path)
    with pytest.raises(ConfigError, match=r"policy.remote.fallback"):
        _cfg("http://127.0.0.1:1", tmp_path, fallback="maybe")


def test_unreachable_server_at_start_is_one_line_exit_2_and_nothing_opened(tmp_path, capsys):
    """check and run refuse before any port opens: the emulator process and the bus are never started."""
    import yaml

    from edgedp.cli import main

    data = load_example()
    data["policy"]["remote"] = {"url": f"http://127.0.0.1:{_free_port()}", "token": TOKEN, "timeout_ms": 500}
    path = tmp_path / "remote.yaml"
    path.write_text(yaml.safe_dump(data))
    before = set(os.listdir("/tmp"))
    for cmd in ("check", "run"):
        assert main([cmd, str(path), "--duration", "1"] if cmd == "run" else [cmd, str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "policy server unreachable" in err[0] and "nothing was powered" in err[0]
    assert not {n for n in set(os.listdir("/tmp")) - before if n.startswith("edgedp-dxl-")}  # no emulator link


def test_missing_token_is_one_line(tmp_path, monkeypatch):
    from edgedp.app import validate

    for name in ("EDGEDP_SERVE_TOKEN", "EDGEDP_REMOTE_TOKEN"):  # both reach policy.remote's default token_env
        monkeypatch.delenv(name, raising=False)
    cfg = _cfg("http://127.0.0.1:1", tmp_path)
    cfg.policy.remote.token = None
    with pytest.raises(UserError, match="a shared token is required"):
        validate(cfg)


def test_serve_refuses_bad_requests_before_starting_ray(tmp_path, capsys, monkeypatch):
    from edgedp.cli import main

    for name in ("EDGEDP_SERVE_TOKEN", "EDGEDP_REMOTE_TOKEN"):  # serve reads both names
        monkeypatch.delenv(name, raising=False)
    assert main(["serve", "preset:small"]) == 2
    assert "shared token is required" in capsys.readouterr().err
    monkeypatch.setenv("EDGEDP_SERVE_TOKEN", TOKEN)
    for argv, needle in ((["preset:nope"], "unknown preset"), (["preset:small", "--backend", "x"], "unknown backend"),
                         (["preset:small", "--replicas", "0"], "--replicas")):
        assert main(["serve", *argv]) == 2
        assert needle in capsys.readouterr().err
    assert not ray.is_initialized()


@pytest.mark.slow
def test_serve_command_prints_where_it_listens_and_stops_cleanly_on_ctrl_c(tmp_path):
    """The CLI end to end in its own process (its own Ray): it answers with the token from --token-file, and
    SIGINT runs serve.shutdown + ray.shutdown and exits 0, after which the port is closed."""
    import signal
    import subprocess
    import sys

    from edgedp.serve.client import PolicyClient, RemoteUnavailable

    port = _free_port()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {k: v for k, v in os.environ.items() if k != "EDGEDP_SERVE_TOKEN"}
    proc = subprocess.Popen([sys.executable, "-m", "edgedp.cli", "serve", "preset:small", "--steps", "2",
                             "--port", str(port), "--token-file", str(token_file)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240  # a guard against hanging, not a timing assertion
        while time.monotonic() < deadline and not any("stop: Ctrl-C" in line for line in lines):
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
        assert any(f"http://127.0.0.1:{port}" in line for line in lines), "".join(lines)
        assert PolicyClient(f"http://127.0.0.1:{port}", TOKEN, 30).health()["steps"] == 2
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        assert "stopped" in out
        with pytest.raises(RemoteUnavailable):
            PolicyClient(f"http://127.0.0.1:{port}", TOKEN, 2).health()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


# ------------------------------------------------------------------------------------------ a real server
SERVED_CHECKPOINT = load_example()["policy"]["checkpoint"]
SERVED_STEPS = load_example()["policy"]["steps"]


class Served:
    def __init__(self):
        from edgedp.serve.service import ServeOptions

        self.opts = ServeOptions(SERVED_CHECKPOINT, steps=SERVED_STEPS, threads=1)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def deploy(self) -> None:
        from ray import serve

        from edgedp.serve.server import APP_NAME, application

        serve.run(application(self.opts, TOKEN, max_batch_size=4, batch_wait_timeout_s=0.01), name=APP_NAME,
                  route_prefix="/")

    def ensure(self) -> None:
        """Redeploy after a test removed the application (the server-killed tests)."""
        from edgedp.serve.client import PolicyClient, RemoteUnavailable

        try:
            PolicyClient(self.url, TOKEN, 5).health()
        except RemoteUnavailable:
            self.deploy()

    def kill(self) -> None:
        from ray import serve

        from edgedp.serve.server import APP_NAME

        serve.delete(APP_NAME)


@pytest.fixture(scope="module")
def served(request):
    from edgedp.serve import server

    s = Served()
    request.addfinalizer(server.stop)  # serve.shutdown + ray.shutdown, also when start-up fails half-way
    server.start(s.opts, TOKEN, port=s.port, num_cpus=1, max_batch_size=4, batch_wait_timeout_s=0.01)
    return s


@pytest.fixture(scope="module")
def local_policy():
    from edgedp.policy_loading import load_policy

    return load_policy(SERVED_CHECKPOINT, "cpu", SERVED_STEPS, 0)


def _obs(policy, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for k, shape in policy.feature_shapes.items():
        if len(shape) == 3:
            out[k] = rng.integers(0, 256, (policy.n_obs_steps, shape[1], shape[2], 3), dtype=np.uint8)
        else:
            out[k] = rng.uniform(-1, 1, (policy.n_obs_steps, *shape)).astype(np.float32)
    return out


def _noise(policy, seed: int) -> np.ndarray:
    return np.random.default_rng(100 + seed).standard_normal((policy.horizon, policy.action_dim)).astype(np.float32)


def test_round_trip_equals_local_predict_chunk(served, local_policy):
    from edgedp.serve.client import PolicyClient

    client = PolicyClient(served.url, TOKEN, 30)
    obs, noise = _obs(local_policy, 0), _noise(local_policy, 0)
    reply = client.predict(obs, noise)
    local = local_policy.predict_chunk(obs, noise)
    assert reply["actions"].shape == local.shape
    np.testing.assert_allclose(reply["actions"], local, rtol=0, atol=1e-5)
    other = client.predict(_obs(local_policy, 1), noise)["actions"]
    assert not np.allclose(other, local, atol=1e-3)  # the answer depends on the observation sent


def test_concurrent_robots_each_get_their_own_chunk(served, local_policy):
    """Requests arriving together may be answered as one batch: each robot still gets the chunk for its own
    observation and noise."""
    from edgedp.serve.client import PolicyClient

    results: dict[int, np.ndarray] = {}

    def robot(i: int) -> None:
        results[i] = PolicyClient(served.url, TOKEN, 60).predict(_obs(local_policy, i), _noise(local_policy, i))["actions"]

    threads = [threading.Thread(target=robot, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == [0, 1, 2, 3]
    for i, got in results.items():
        np.testing.assert_allclose(got, local_policy.predict_chunk(_obs(local_policy, i), _noise(local_policy, i)),
                                   rtol=0, atol=1e-4)


def test_reply_past_its_deadline_means_no_chunk_or_the_local_one(served, local_policy):
    """A 1 ms deadline on a chunk the server needs tens of ms for: no reply in time. Without fallback the
    planner gets PolicyUnavailable (it holds and retries); with fallback: local the same call returns the local
    policy's chunk and every later call stays local."""
    from edgedp.compile import get_compiled_sampler
    from edgedp.runtime.remote_policy import PolicyUnavailable, RemotePolicy
    from edgedp.serve.client import PolicyClient, RemoteUnavailable

    obs, noise = _obs(local_policy, 0), _noise(local_policy, 0)
    with pytest.raises(RemoteUnavailable, match="timed out"):
        PolicyClient(served.url, TOKEN, 0.001).predict(obs, noise)
    strict = RemotePolicy(PolicyClient(served.url, TOKEN, 0.001), local_policy, "none")
    with pytest.raises(PolicyUnavailable):
        strict.predict_chunk(obs, noise)
    assert [e["event"] for e in strict.take_events()] == ["remote_unavailable"] and strict.source == "remote"
    sampler = get_compiled_sampler(local_policy, "eager", "fp32", SERVED_STEPS, "cpu")
    lenient = RemotePolicy(PolicyClient(served.url, TOKEN, 0.001), local_policy, "local", local_sampler=sampler)
    np.testing.assert_allclose(lenient.predict_chunk(obs, noise), local_policy.predict_chunk(obs, noise), atol=1e-6)
    assert lenient.source == "local"
    assert [e["event"] for e in lenient.take_events()] == ["remote_unavailable", "fallback_local"]
    lenient.predict_chunk(obs, noise)
    assert lenient.take_events() == [] and lenient.failures == 1  # stays local, no new attempt


def _raw(served, body: bytes, token: str | None = TOKEN, method: str = "POST", path: str = "/predict"):
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, wire.decode_reply(data)


def test_wrong_or_missing_token_is_refused(served, local_policy):
    body = wire.encode_request(_obs(local_policy, 0))
    for token in ("wrong-token", None, TOKEN[:-1]):
        status, msg = _raw(served, body, token)
        assert status == 401 and msg == {"error": "token refused"}
    status, msg = _raw(served, b"", "wrong", method="GET", path="/health")
    assert status == 401


def test_malformed_and_misshapen_payloads_get_one_line(served, local_policy):
    status, msg = _raw(served, b"\x93garbage")
    assert status == 400 and "not a msgpack message" in msg["error"]
    obs = _obs(local_policy, 0)
    key = next(k for k, s in local_policy.feature_shapes.items() if len(s) == 1)
    obs[key] = obs[key][:, :1]
    status, msg = _raw(served, wire.encode_request(obs))
    assert status == 422 and key in msg["error"] and "\n" not in msg["error"]
    # the server is still answering afterwards
    status, msg = _raw(served, wire.encode_request(_obs(local_policy, 0)))
    assert status == 200 and msg["actions"].shape == (local_policy.horizon, local_policy.action_dim)


def test_wrong_token_is_refused_at_check(served, tmp_path):
    from edgedp.app import validate

    cfg = _cfg(served.url, tmp_path)
    cfg.policy.remote.token = "not-the-token-0000"
    with pytest.raises(UserError, match="token refused"):
        validate(cfg)
    assert validate(_cfg(served.url, tmp_path)).remote.spec["steps"] == SERVED_STEPS


def test_check_reports_the_server(served, tmp_path, capsys):
    import yaml

    from edgedp.cli import main

    data = load_example()
    data["policy"]["remote"] = {"url": served.url, "token": TOKEN, "fallback": "local"}
    path = tmp_path / "remote.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"remote: {served.url} answers" in out and f"K={SERVED_STEPS}" in out and "fallback local" in out
    assert TOKEN not in out


def test_server_policy_that_does_not_fit_the_checkpoint_is_refused(served, tmp_path):
    from edgedp.app import validate

    cfg = _cfg(served.url, tmp_path)
    cfg.policy.warm_start = True  # the server was not started with --warm-start-level
    with pytest.raises(UserError, match="policy.remote: the server samples with"):
        validate(cfg)


def test_token_sources_reach_the_request(served, tmp_path, monkeypatch):
    from edgedp.app import validate

    good = tmp_path / "token.txt"
    good.write_text(TOKEN + "\n")
    cfg = _cfg(served.url, tmp_path, token=None, token_file=str(good))
    assert validate(cfg).remote.token == TOKEN
    bad = tmp_path / "bad.txt"
    bad.write_text("wrong-wrong-wrong\n")
    with pytest.raises(UserError, match="token refused"):
        validate(_cfg(served.url, tmp_path, token=None, token_file=str(bad)))
    monkeypatch.setenv("MY_TOKEN", TOKEN)
    assert validate(_cfg(served.url, tmp_path, token=None, token_env="MY_TOKEN")).remote.token == TOKEN
    monkeypatch.setenv("MY_TOKEN", "wrong-wrong-wrong")
    with pytest.raises(UserError, match="token refused"):
        validate(_cfg(served.url, tmp_path, token=None, token_env="MY_TOKEN"))


def test_remote_settings_reach_the_policy(served, tmp_path):
    from edgedp.app import assemble
    from edgedp.runtime.remote_policy import RemotePolicy

    built = assemble(_cfg(served.url, tmp_path, timeout_ms=1234, fallback="local"))
    try:
        policy = built.parts.policy
        assert isinstance(policy, RemotePolicy)
        assert policy.config == {"url": served.url, "timeout_ms": 1234.0, "fallback": "local"}
        assert built.parts.sampler is not None  # fallback: local compiles the local sampler
        assert built.parts.config_summary["remote"]["url"] == served.url
    finally:
        for close in reversed(built.devices.closers):
            close()
    built = assemble(_cfg(served.url, tmp_path))
    try:
        assert built.parts.policy.fallback == "none" and built.parts.sampler is None  # nothing compiled locally
    finally:
        for close in reversed(built.devices.closers):
            close()


def _sim_run(cfg, tmp_path, kill):
    """A sim run against the server; `kill()` once 3 chunks came from it; stops once 4 more chunks were
    published after the kill or 2 s passed without one (a guard for the hold case), whatever came first."""
    from edgedp.app import build
    from edgedp.runtime.lifecycle import Runtime

    parts = build(cfg)
    rt = Runtime(parts, 120.0, tmp_path / "tel.json", plot=False, live=False, console=None)
    marks: dict = {}

    def chaos():
        deadline = time.monotonic() + 100  # guards against hanging, not timing assertions
        while len(rt.tel.chunk_log) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        kill()
        marks["t_kill"], marks["n_kill"] = time.monotonic(), len(rt.tel.chunk_log)
        quiet_since = time.monotonic()
        n = marks["n_kill"]
        while time.monotonic() < deadline:
            if len(rt.tel.chunk_log) != n:
                n, quiet_since = len(rt.tel.chunk_log), time.monotonic()
            if n >= marks["n_kill"] + 4 or time.monotonic() - quiet_since > 2.5:
                break
            time.sleep(0.02)
        rt.request_stop("test done")

    helper = threading.Thread(target=chaos, daemon=True)
    helper.start()
    code = rt.run()
    helper.join(10)
    tel = json.loads((tmp_path / "tel.json").read_text())
    return code, rt, tel, marks


def test_server_sampling_at_other_timesteps_is_refused(served, tmp_path):
    """policy.timesteps: the served loop must sample at the same timesteps (edgedp serve --timesteps)."""
    from edgedp.app import validate

    cfg = _cfg(served.url, tmp_path)
    cfg.policy.sampler, cfg.policy.steps, cfg.policy.timesteps = "dpmsolver++", 4, "logsnr"
    with pytest.raises(UserError, match=r"policy.remote: the server samples at timesteps of its spacing, this "
                                        r"config needs \[90, 60, 16, 2\]"):
        validate(cfg)



def test_server_running_another_sampler_is_refused(served, tmp_path):
    """policy.sampler: a server that samples with another method (edgedp serve --sampler) is refused before
    anything is powered; the robot would otherwise run the server's sampler while its config names another."""
    from edgedp.app import validate

    cfg = _cfg(served.url, tmp_path)
    cfg.policy.sampler = "unipc"  # the served checkpoint's own sampler is DDIM, at the same K and spacing
    with pytest.raises(UserError, match=r"policy.remote: the server samples with ddim, this config needs unipc "
                                        r"\(edgedp serve --sampler\)"):
        validate(cfg)
    validate(_cfg(served.url, tmp_path))  # the checkpoint's own sampler on both sides: accepted


# The tests below kill the served application (module-scoped fixture): keep them last in this module.
def test_server_killed_mid_run_falls_back_to_the_local_policy(served, tmp_path):
    served.ensure()
    code, rt, tel, marks = _sim_run(_cfg(served.url, tmp_path, fallback="local", timeout_ms=2000), tmp_path,
                                    served.kill)
    assert code == 0, tel["alerts"]
    events = [e["event"] for e in tel["policy_events"]]
    assert events[:2] == ["remote_unavailable", "fallback_local"]
    assert tel["policy_source"] == "local"
    assert not tel["planner_errors"]
    after = [c for c in rt.tel.chunk_log if c["t_start"] >= marks["t_kill"]]
    assert len(after) >= 3  # the run went on, planned on this machine
    assert "policy local" in rt.tel._policy_status()


@pytest.mark.slow
def test_server_killed_mid_run_without_fallback_holds_and_retries(served, tmp_path):
    served.ensure()
    code, rt, tel, marks = _sim_run(_cfg(served.url, tmp_path, fallback="none", timeout_ms=2000), tmp_path,
                                    served.kill)
    assert code == 0, tel["alerts"]
    events = [e["event"] for e in tel["policy_events"]]
    assert "remote_unavailable" in events and "retry" in events and "fallback_local" not in events
    assert tel["policy_source"] == "remote"
    assert not [c for c in rt.tel.chunk_log if c["t_start"] > marks["t_kill"] + 0.5]  # nothing planned after
    assert tel["uncovered_ticks"] > 0  # the servo loop ran out of plan and held the arm
    assert events.count("remote_unavailable") >= 2  # it kept trying
