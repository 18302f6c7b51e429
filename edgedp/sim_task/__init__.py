"""The simulated reach task: a scripted expert, an episode dataset, and training of the policies on it.

Recording steps the scene's kinematics directly (no servo loop, no real-time clock), so hundreds of
demonstrations take seconds; the runtime is only needed to *run* a trained policy.
"""
from __future__ import annotations
