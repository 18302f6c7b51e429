"""Closed-loop evaluation of a policy on the simulated reach task through the full runtime (`edgedp eval`).

episodes.py runs episodes (scene reset, runtime start, success or timeout, clean stop, arm homed);
judge.py decides success from the emulator's true joint angles; homing.py returns the arm between
episodes over the real bus protocol; report.py turns episodes into the JSON document and the table.
"""
