"""The robot's side of the wire: one keep-alive HTTP connection to the policy server, with a deadline.

Standard library only (http.client), so a board needs msgpack and nothing from Ray to talk to the server.
Two kinds of failure, because the runtime treats them differently:
- RemoteUnavailable: no answer in time (refused, reset, timed out, 5xx): the arm holds, the planner retries
  or falls back;
- RemoteRefused: the server answered and said no (token, malformed request, wrong shapes): a mistake that
  retrying cannot fix.
"""
from __future__ import annotations

import http.client
import os
import socket
import time
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit

from edgedp.serve.wire import MAX_REQUEST_BYTES, WireError, decode_reply, encode_request

# The shared token's one environment variable, read by `edgedp serve` and by a robot's policy.remote alike, so
# one `export` serves both ends. EDGEDP_REMOTE_TOKEN was the robot side's name (documented as the default of
# policy.remote.token_env): still read on both sides; both set to different values is refused, not guessed.
DEFAULT_TOKEN_ENV = "EDGEDP_SERVE_TOKEN"
TOKEN_ENV_ALIASES = ("EDGEDP_REMOTE_TOKEN",)


class RemoteUnavailable(ConnectionError):
    """The server did not answer within the deadline (or not at all)."""


class RemoteRefused(ValueError):
    """The server answered with a refusal; the message is its one line."""


def read_token(token: Optional[str], token_file: Optional[Path], env: str = DEFAULT_TOKEN_ENV,
               field: str = "policy.remote") -> str:
    """The shared token from the config, a file (first line) or an environment variable, in that order."""
    from edgedp.errors import UserError

    if token:
        return token
    if token_file is not None:
        try:
            value = Path(token_file).read_text(encoding="utf-8").strip().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{field}.token_file: cannot read {token_file} ({exc.__class__.__name__})") from None
        if not value or not value[0].strip():
            raise UserError(f"{field}.token_file: {token_file} is empty")
        return value[0].strip()
    value = env_token(env, field)
    if value:
        return value
    where = "--token-file" if field == "serve" else "token, token_file"
    names = " or ".join(_env_names(env))
    raise UserError(f"{field}: a shared token is required ({where}, or the {names} environment variable)")


def _env_names(env: str) -> tuple[str, ...]:
    """The default name and its alias are one setting (either names both); any other name is read alone."""
    standard = (DEFAULT_TOKEN_ENV, *TOKEN_ENV_ALIASES)
    return standard if env in standard else (env,)


def env_token(env: str = DEFAULT_TOKEN_ENV, field: str = "policy.remote") -> Optional[str]:
    """The token from the environment, or None; two names of the same setting holding different tokens is
    a UserError (a server and a robot would silently disagree: every request refused)."""
    from edgedp.errors import UserError

    found = {name: os.environ.get(name, "").strip() for name in _env_names(env)}
    found = {name: v for name, v in found.items() if v}
    if len(set(found.values())) > 1:
        raise UserError(f"{field}: {' and '.join(found)} are both set, to different tokens; unset one "
                        f"({DEFAULT_TOKEN_ENV} is the documented name)")
    return next(iter(found.values()), None)


class PolicyClient:
    def __init__(self, url: str, token: str, timeout_s: float):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be http://HOST:PORT or https://HOST:PORT, got {url!r}")
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._base = parts.path.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/msgpack"}
        self.timeout_s = float(timeout_s)
        self._conn: Optional[http.client.HTTPConnection] = None

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=timeout)
        else:
            self._conn.timeout = timeout
            if self._conn.sock is not None:
                self._conn.sock.settimeout(timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _call(self, method: str, path: str, body: Optional[bytes], timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        try:
            conn = self._connection(timeout)
            conn.request(method, self._base + path, body=body, headers=self._headers)
            conn.sock.settimeout(max(1e-3, deadline - time.monotonic()))
            resp = conn.getresponse()
            data = resp.read(MAX_REQUEST_BYTES + 1)
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timeout (socket.timeout is OSError)
            self.close()
            kind = "timed out" if isinstance(exc, socket.timeout) else (type(exc).__name__ + (f": {exc}" if str(exc) else ""))
            raise RemoteUnavailable(f"{self.url}: no reply ({kind})") from None
        if len(data) > MAX_REQUEST_BYTES:
            self.close()
            raise RemoteRefused(f"{self.url}: reply larger than {MAX_REQUEST_BYTES} bytes refused")
        if resp.status >= 500:
            self.close()
            raise RemoteUnavailable(f"{self.url}: server error {resp.status}")
        try:
            msg = decode_reply(data)
        except WireError as exc:
            if resp.status != 200:  # not our application answering (Serve's proxy: the app is gone or not ready)
                self.close()
                raise RemoteUnavailable(f"{self.url}: HTTP {resp.status} without a policy reply (application "
                                        f"not deployed?)") from None
            raise RemoteRefused(f"{self.url}: unreadable reply ({exc})") from None
        if "error" in msg:
            raise RemoteRefused(f"{self.url}: {msg['error']} (HTTP {resp.status})")
        return msg

    def health(self, timeout: Optional[float] = None) -> dict:
        return self._call("GET", "/health", None, timeout or self.timeout_s)["spec"]

    def predict(self, obs: Mapping[str, Any], noise: Any = None,
                conditioning: Optional[Mapping[str, Any]] = None) -> dict:
        """{"actions": (horizon, action_dim) float32, "timing": server stages in ms, "batch": its batch size}."""
        msg = self._call("POST", "/predict", encode_request(obs, noise, conditioning), self.timeout_s)
        if "actions" not in msg:
            raise RemoteRefused(f"{self.url}: reply without actions")
        return msg
