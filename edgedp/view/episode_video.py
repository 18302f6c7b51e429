"""`edgedp eval --video DIR`: one mp4 per evaluated episode, named so that failures sort first.

A poller thread reads the policy camera's newest frame (``Camera.latest()``, a cheap read that never
disturbs the driver or the planner) at twice the camera rate and keeps each new frame once (by ``seq``). The
eval loop calls :meth:`EpisodeVideos.cut` when an episode ends; the frames since the previous cut are that
episode (the camera only runs while an episode runs), labelled and written at the camera's rate with PyAV.

A policy that sees no image (a Push-T state config: its one "camera" is the keypoint sensor, a (16,) vector)
is filmed through the scene's own render instead (``render``): the sensor's frames still say when a new frame
is due (they only come while an episode runs), and each is replaced by the scene's image at that moment.

Names: ``0-fail_<condition>_ep003_seed3.mp4`` / ``1-ok_...``: a plain sort (ls, a file browser) lists the
failures first, in episode order.
"""
from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

MIN_SIDE = 384  # sim cameras are ~96 px: enlarge (nearest neighbour) so a person can see the scene


def video_name(label: str, index: int, seed: int, success: bool) -> str:
    safe = re.sub(r"[^A-Za-z0-9.+-]+", "-", re.sub(r"\s+", "", label)).strip("-") or "run"
    return f"{'1-ok' if success else '0-fail'}_{safe}_ep{index:03d}_seed{seed}.mp4"


class EpisodeVideos:
    def __init__(self, out_dir: str | Path, camera: Any, fps: float, vcodec: Optional[str] = None,
                 render: Optional[Callable[[], np.ndarray]] = None):
        from edgedp.datasets import require

        require()
        self.out = Path(out_dir)
        self.camera = camera
        self.render = render  # the scene's RGB image, for frames that are not images (a keypoint sensor)
        self.fps = max(1, int(round(fps)))
        self.vcodec = vcodec or _pick_codec()
        self.written: list[Path] = []
        self._frames: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last_seq: Optional[int] = None
        self._thread = threading.Thread(target=self._poll, name="eval-video", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        period = 0.5 / self.fps
        while not self._stop.wait(period):
            try:
                frame = self.camera.latest()
            except Exception:  # a stopped or failed camera between episodes: nothing to take
                continue
            if frame is None or frame.seq == self._last_seq:
                continue
            self._last_seq = frame.seq
            image = frame.image
            if not is_image(image):
                if self.render is None:
                    continue
                try:
                    image = self.render()
                except Exception:  # a failed scene: the episode's own error says why
                    continue
            with self._lock:
                self._frames.append(np.array(image, copy=True))

    def cut(self, label: str, index: int, seed: int, success: bool, note: str = "") -> Optional[Path]:
        """The frames since the last cut are this episode: write them (None when there were none)."""
        with self._lock:
            frames, self._frames = self._frames, []
        if not frames:
            return None
        path = self.out / video_name(label, index, seed, success)
        text = f"ep {index} seed {seed} {'OK' if success else 'FAIL'} {note}".strip()
        write_mp4(path, [_label(_enlarge(f), text, success) for f in frames], self.fps, self.vcodec)
        self.written.append(path)
        return path

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)


def is_image(a: Any) -> bool:
    """An RGB uint8 picture (H × W × 3), not a state vector filmed by mistake."""
    return isinstance(a, np.ndarray) and a.ndim == 3 and a.shape[2] == 3 and min(a.shape[:2]) >= 2


def _pick_codec() -> str:
    from edgedp.datasets.video import encoder_available

    for codec in ("libx264", "mpeg4"):  # H.264 plays in every browser and player; AV1 not everywhere
        if encoder_available(codec):
            return codec
    return "libsvtav1"


def _enlarge(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    k = max(1, int(np.ceil(MIN_SIDE / max(h, w))))
    out = np.repeat(np.repeat(image, k, axis=0), k, axis=1)
    return out[: out.shape[0] // 2 * 2, : out.shape[1] // 2 * 2]  # yuv420p: even sides


def _label(image: np.ndarray, text: str, success: bool) -> np.ndarray:
    import cv2

    out = np.ascontiguousarray(image)
    color = (40, 200, 40) if success else (230, 40, 40)
    cv2.rectangle(out, (0, 0), (out.shape[1], 22), (0, 0, 0), -1)
    cv2.putText(out, text, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)
    return out


def write_mp4(path: Path, frames: list[np.ndarray], fps: int, vcodec: str) -> None:
    """Written beside the target and renamed: a video in DIR is always complete."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with av.open(str(tmp), "w", format="mp4") as out:
            stream = out.add_stream(vcodec, rate=fps, options={"crf": "23"} if vcodec == "libx264" else {})
            stream.pix_fmt = "yuv420p"
            stream.height, stream.width = frames[0].shape[:2]
            for image in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def for_session(out_dir: str | Path, parts: Any) -> EpisodeVideos:
    """Videos of the camera that feeds the policy first (the one the evaluation's scene renders); when that
    source gives no image (a keypoint sensor), of the scene's own render, paced by that source."""
    from edgedp.datasets import DatasetError
    from edgedp.errors import UserError

    if not parts.cameras:
        raise UserError("--video: the config has no camera to film")
    camera = next(iter(parts.cameras.values()))
    scene = getattr(parts, "scene", None)
    render = None
    if scene is not None and callable(getattr(scene, "render", None)):
        def render() -> np.ndarray:
            return scene.render()[0]  # (rgb, depth)
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return EpisodeVideos(out_dir, camera, getattr(camera, "fps", 30) or 30, render=render)
    except (DatasetError, OSError) as exc:
        raise UserError(f"--video: {exc}") from None
