"""`edgedp scan` exit codes and output, and `edgedp emulate` as a separate process serving a scan."""
from __future__ import annotations

import signal
import subprocess
import sys
import time


from edgedp.cli import main
from firmware_bridge.dynamixel.emulator import Emulator


def test_scan_lists_servos_and_exits_0(capsys):
    with Emulator("1:xm430-w350,4:xl330-m288@44", baud=2_000_000) as emu:
        emu.servo(4).set("Operating_Mode", 4)
        code = main(["scan", "--port", emu.port_name, "--baud", "2000000"])
    out = capsys.readouterr().out
    assert code == 0
    lines = [l for l in out.splitlines() if "xm430-w350" in l or "xl330-m288" in l]
    assert len(lines) == 2
    assert "1020" in lines[0] and "v52" in lines[0] and "2000000" in lines[0] and "position" in lines[0] and "off" in lines[0]
    assert "1200" in lines[1] and "v44" in lines[1] and "extended_position" in lines[1]


def test_scan_exits_1_when_nothing_answers(capsys):
    with Emulator("1:xm430-w350", baud=1_000_000) as emu:
        code = main(["scan", "--port", emu.port_name, "--baud", "57600"])
    assert code == 1
    assert capsys.readouterr().out.strip() == f"no servos answered on {emu.port_name} at 57600 baud"


def test_scan_exits_2_on_a_bad_port_or_baud(capsys, tmp_path):
    assert main(["scan", "--port", str(tmp_path / "ttyUSB9")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"edgedp scan: serial port {tmp_path / 'ttyUSB9'} does not exist"]
    assert main(["scan", "--port", "/dev/null", "--baud", "12345"]) == 2
    assert "not a baud rate" in capsys.readouterr().err
    not_a_tty = tmp_path / "plain"
    not_a_tty.write_text("")
    assert main(["scan", "--port", str(not_a_tty), "--baud", "1000000"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_emulate_command_serves_until_sigterm(tmp_path, capsys):
    port_file = tmp_path / "port"
    proc = subprocess.Popen([sys.executable, "-m", "edgedp.cli", "emulate", "--servos", "1:xm430-w350,2:xm430-w350",
                             "--baud", "1000000", "--port-file", str(port_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        port = port_file.read_text().strip()
        assert main(["scan", "--port", port, "--baud", "1000000"]) == 0
        assert capsys.readouterr().out.count("xm430-w350") == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert f"on {port}" in out and "ids 1, 2" in out
    assert not port_file.exists()


def test_emulate_rejects_a_bad_servo_list():
    proc = subprocess.run([sys.executable, "-m", "edgedp.cli", "emulate", "--servos", "1:xm999"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("edgedp emulate: --servos: unknown servo model 'xm999'")
    assert len(proc.stderr.strip().splitlines()) == 1
