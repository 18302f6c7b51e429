"""The real-time runtime: rate loops, the lock-free chunk ring, the servo loop, the planner, telemetry.

Modules here receive their collaborators (bus, cameras, policy, sampler); only edgedp/app.py picks
concrete classes from the config.
"""
