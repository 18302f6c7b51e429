"""Video files of a v3.0 dataset with PyAV: encode an episode, append it to a shared mp4, decode it back.

LeRobot 0.4.4 (src/lerobot/datasets/video_utils.py) encodes each episode on its own (encode_video_frames:
libsvtav1, yuv420p, g=2, crf=30, preset 12), then joins it to the current file with ffmpeg's concat demuxer
and stream copy (concatenate_video_files, no re-encoding); an episode's place in the file is its
[from_timestamp, to_timestamp) in the episode row, from get_video_duration_in_s. Its readers
(decode_video_frames_torchcodec, decode_video_frames_torchvision with pyav) look frames up by timestamp
with a 1e-4 s tolerance, so frame i of an episode must sit at from_timestamp + i / fps exactly.

Codec: PyAV's wheels bundle FFmpeg with the SVT-AV1 encoder and the dav1d decoder, so edgedp writes AV1 like
LeRobot does and reads it back; LeRobot's torchcodec and pyav backends decode AV1 too (through their FFmpeg's
dav1d or libaom). ``h264`` (libx264) is the fallback when an FFmpeg lacks SVT-AV1.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from edgedp.datasets import DatasetError
from edgedp.datasets.schema import DEFAULT_VCODEC, VIDEO_OPTIONS

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration at info level; errors only


def encoder_available(vcodec: str) -> bool:
    import av

    try:
        av.codec.Codec(vcodec, "w")
        return True
    except Exception:
        return False


def pick_vcodec(requested: Optional[str] = None) -> str:
    """The requested codec, or LeRobot's default (AV1) when this FFmpeg has it, else h264."""
    if requested:
        if not encoder_available(requested):
            raise DatasetError(f"video codec {requested!r} has no encoder in this PyAV/FFmpeg build")
        return requested
    return DEFAULT_VCODEC if encoder_available(DEFAULT_VCODEC) else "h264"


def _options(vcodec: str) -> dict[str, str]:
    opts = {"g": str(VIDEO_OPTIONS["g"]), "crf": str(VIDEO_OPTIONS["crf"])}
    if vcodec == "libsvtav1":
        opts["preset"] = str(VIDEO_OPTIONS["preset"])
    return opts


def encode(frames: np.ndarray, path: Path, fps: int, vcodec: str) -> None:
    """Write (N, H, W, 3) uint8 RGB frames as one mp4 at ``fps``; frame i gets pts i / fps."""
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise DatasetError(f"video frames must be (N, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    n, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise DatasetError(f"video frames are {w}x{h}: yuv420p video needs an even width and height")
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream(vcodec, rate=int(fps), options=_options(vcodec))
        stream.pix_fmt = VIDEO_OPTIONS["pix_fmt"]
        stream.width, stream.height = w, h
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def concatenate(inputs: list[Path], output: Path) -> None:
    """Join mp4 files made by :func:`encode` with the same settings into ``output``: packets are copied
    (no re-encoding) and each file's timestamps are shifted by the durations before it (concat demuxer)."""
    import av

    with tempfile.NamedTemporaryFile("w", suffix=".ffconcat", delete=False) as listing:
        listing.write("ffconcat version 1.0\n")
        for p in inputs:
            listing.write(f"file '{Path(p).resolve()}'\n")
        list_path = listing.name
    try:
        with av.open(list_path, "r", format="concat", options={"safe": "0"}) as src, \
                av.open(str(output), "w", format="mp4") as dst:
            vin = src.streams.video[0]
            vout = dst.add_stream_from_template(vin, opaque=True)  # copy packets: no codec needed
            vout.time_base = vin.time_base
            for packet in src.demux(vin):
                if packet.dts is None:  # the demuxer's flush packet
                    continue
                packet.stream = vout
                dst.mux(packet)
    finally:
        os.unlink(list_path)


def duration_s(path: Path) -> float:
    """Seconds of video in a file, as LeRobot measures it (get_video_duration_in_s)."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        if s.duration is not None:
            return float(s.duration * s.time_base)
        return float(c.duration / av.time_base)


def info(path: Path) -> dict:
    """The ``info`` block of a video feature in info.json (video_utils.get_video_info)."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return {"video.height": s.height, "video.width": s.width, "video.codec": s.codec_context.codec.canonical_name
                if hasattr(s.codec_context.codec, "canonical_name") else s.codec_context.name,
                "video.pix_fmt": s.codec_context.pix_fmt, "video.is_depth_map": False,
                "video.fps": int(s.base_rate), "video.channels": 3, "has_audio": len(c.streams.audio) > 0}


def decode(path: Path, from_s: float, count: int, fps: int, tolerance_s: float = 1e-4) -> np.ndarray:
    """Frames from_s, from_s + 1/fps, ... (``count`` of them) of a file, as (count, H, W, 3) uint8 RGB.

    Every wanted time must have a decoded frame within ``tolerance_s`` (LeRobot's default tolerance), else the
    file and the episode rows disagree and that is an error, not a silent off-by-one.
    """
    import av

    wanted = from_s + np.arange(count) / fps
    out: list[Optional[np.ndarray]] = [None] * count
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        if from_s > 0:
            c.seek(int(max(0.0, from_s - 1.0) / s.time_base), stream=s, backward=True, any_frame=False)
        for frame in c.decode(s):
            t = float(frame.pts * s.time_base)
            if t > wanted[-1] + tolerance_s:
                break
            i = int(round((t - from_s) * fps))
            if 0 <= i < count and abs(t - wanted[i]) < tolerance_s:
                out[i] = frame.to_ndarray(format="rgb24")
    missing = [i for i, f in enumerate(out) if f is None]
    if missing:
        raise DatasetError(f"{path}: no frame within {tolerance_s} s of t={wanted[missing[0]]:.4f} s "
                           f"({len(missing)} of {count} frames missing)")
    return np.stack(out)
