"""Seeing what the robot sees: the live rerun stream of `edgedp run --view` (rerun_view) and per-episode
evaluation videos of `edgedp eval --video` (episode_video)."""
