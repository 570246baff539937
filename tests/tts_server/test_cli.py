"""The ``tts-server`` command as a user runs it: start-up failures, the README's main command."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from scipy.io import wavfile


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tts_server", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def offline_env(tmp_path):
    """No Hugging Face cache and no network: Soprano's Hub weights are unavailable."""
    return {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}


def test_missing_model_directory_fails_at_start_naming_it(tmp_path):
    result = run_cli("--engine", "soprano", "--model-path", str(tmp_path / "nowhere"), "--port", "0")
    assert result.returncode == 2
    assert "cannot start" in result.stderr and str(tmp_path / "nowhere") in result.stderr


def test_corrupt_model_directory_fails_at_start_naming_the_file(soprano_dir, tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(soprano_dir, broken)
    (broken / "decoder.pth").write_bytes(b"not a checkpoint")
    result = run_cli("--engine", "auto", "--model-path", str(broken), "--port", "0")
    assert result.returncode == 2
    assert str(broken / "decoder.pth") in result.stderr


def test_invalid_config_fails_naming_the_setting(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = 'eighty'\n")
    result = run_cli("--config", str(bad))
    assert result.returncode == 2 and "$.server.port" in result.stderr


def test_say_without_a_server_explains(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tts_server",
            "say",
            "Hi.",
            "-o",
            str(tmp_path / "x.wav"),
            "--url",
            f"ws://127.0.0.1:{free_port()}/ws/stream",
            "--wait",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "is the server running" in result.stderr


def test_readme_main_command_speaks_real_words_offline(tmp_path, offline_env):
    """`tts-server & tts-server say "Hello there." -o hello.wav` on a machine without Soprano weights."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tts_server", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **offline_env},
    )
    try:
        out = tmp_path / "hello.wav"
        said = subprocess.run(
            [
                sys.executable,
                "-m",
                "tts_server",
                "say",
                "Hello there.",
                "-o",
                str(out),
                "--url",
                f"ws://127.0.0.1:{port}/ws/stream",
                "--wait",
                "90",
            ],
            capture_output=True,
            text=True,
            timeout=150,
        )
        assert said.returncode == 0, said.stderr
        assert "wrote" in said.stdout
        rate, audio = wavfile.read(io.BytesIO(out.read_bytes()))
        assert rate == 48_000 and audio.dtype.name == "int16"
        assert 0.5 < len(audio) / rate < 3.0 and abs(audio).max() > 1000
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
            health = json.load(r)
        assert health["engine"] == "espeak"  # auto fell back: no Soprano weights here
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    assert "huggingface-cli download ekwek/Soprano-1.1-80M" in stderr  # the warning says how to get Soprano
    assert server.returncode in (0, -15)


def test_stdout_stays_clean_while_serving(soprano_dir):
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tts_server",
            "--engine",
            "soprano",
            "--model-path",
            str(soprano_dir),
            "--device",
            "cpu",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    assert json.load(r)["engine"] == "soprano"
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, (
                    server.stderr.read() if server.poll() is not None else "timeout"
                )
                time.sleep(0.3)
    finally:
        server.terminate()
        stdout, _ = server.communicate(timeout=30)
    assert stdout == ""
