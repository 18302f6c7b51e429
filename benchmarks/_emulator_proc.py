"""Run the Dynamixel emulator in its own process for benchmarks, so its serving thread does not share the
measured process's GIL (on a robot the servos are separate hardware)."""
from __future__ import annotations

import multiprocessing as mp


def _serve(servos: dict, baud: int, conn, stop) -> None:
    import os

    from firmware_bridge.dynamixel.emulator import Emulator

    try:  # hardware answers on time whatever else the computer does; give the emulator the same chance
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(60))
    except OSError:
        pass

    emu = Emulator(servos=servos, baud=baud).start()
    conn.send(emu.port_name)
    stop.wait()
    emu.stop()


class EmulatorProcess:
    def __init__(self, servos: dict, baud: int = 4_000_000):
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        parent, child = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_serve, args=(servos, baud, child, self._stop), daemon=True)
        self._proc.start()
        self.port_name = parent.recv()

    def close(self) -> None:
        self._stop.set()
        self._proc.join(2)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join()
