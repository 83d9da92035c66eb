"""The TOML configuration: strict checking with line numbers, and its precedence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.cli.client import request
from supervisor.cli.config import ConfigError, load
from supervisor.cli.localcluster import free_tcp_endpoint, wait_for
from tests.conftest import trainguard

pytestmark = pytest.mark.timeout(60)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trainguard.toml"
    path.write_text(text)
    return path


def test_every_problem_is_reported_with_its_line(tmp_path):
    path = write(tmp_path, (
        "[daemon]\n"                       # 1
        'bind = "tcp://0.0.0.0:7755"\n'    # 2
        'heartbeat_timout = "15s"\n'       # 3 typo
        'heartbeat_interval = "-2s"\n'     # 4 negative
        "[agent]\n"                        # 5
        'accelerator = "gpu"\n'            # 6 not allowed
        "chips = true\n"                   # 7 wrong type
        "[deamon]\n"                       # 8 unknown section
        "x = 1\n"
    ))
    with pytest.raises(ConfigError) as err:
        load(path, explicit=True)
    lines = str(err.value).splitlines()
    assert [line.split(":")[1] for line in lines] == ["3", "4", "6", "7", "8"]
    assert "unknown key in [daemon] 'heartbeat_timout'; did you mean 'heartbeat_timeout'?" in lines[0]
    assert "daemon.heartbeat_interval: a duration must be zero or positive, got '-2s'" in lines[1]
    assert "agent.accelerator: 'gpu' is not allowed; allowed: ascend, nvidia, cpu, sim-ascend, sim-nvidia" in lines[2]
    assert "agent.chips: expected a whole number" in lines[3]
    assert "unknown section 'deamon'; did you mean 'daemon'?" in lines[4]


def test_invalid_toml_names_its_line(tmp_path):
    path = write(tmp_path, '[daemon]\nbind = "tcp://x\n')
    with pytest.raises(ConfigError, match=r"trainguard.toml:2: not valid TOML"):
        load(path, explicit=True)


def test_a_missing_default_file_is_no_configuration_but_a_missing_named_one_is_an_error(tmp_path):
    assert load(tmp_path / "absent.toml", explicit=False).values == {}
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load(tmp_path / "absent.toml", explicit=True)


def test_a_config_path_that_is_a_fifo_a_device_or_huge_is_refused_at_once(tmp_path):
    os.mkfifo(tmp_path / "fifo.toml")
    (tmp_path / "zero.toml").symlink_to("/dev/zero")
    with open(tmp_path / "big.toml", "wb") as f:
        f.truncate(20 * 1024 * 1024)
    for name, reason in [
        ("fifo.toml", "refused: it is a FIFO (named pipe); a configuration file must be a regular file (or a symlink to one)"),
        ("zero.toml", "refused: it is a character device; a configuration file must be a regular file (or a symlink to one)"),
        ("big.toml", "refused: 20971520 bytes; a configuration file may hold at most 256 KiB"),
    ]:
        with pytest.raises(ConfigError) as info:
            load(tmp_path / name, explicit=True)
        assert str(info.value) == f"{tmp_path / name}:0: {reason}"


def test_a_binary_config_file_is_refused_without_quoting_it(tmp_path):
    path = tmp_path / "trainguard.toml"
    path.write_bytes(b"[daemon]\nbind = \"\x00\x01secret\"\n")
    with pytest.raises(ConfigError) as info:
        load(path, explicit=True)
    assert str(info.value) == f"{path}:0: refused: not a configuration file: binary, not text (control character NUL at character 17)"


@pytest.mark.slow
def test_a_config_typo_refuses_to_start_the_daemon_with_the_line(tmp_path):
    path = write(tmp_path, '[daemon]\nheartbeat_timeout = "15s"\nsate_dir = "/tmp/x"\n')
    result = trainguard("--config", str(path), "daemon", "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 1
    assert f"{path}:3: unknown key in [daemon] 'sate_dir'; did you mean 'state_dir'?" in result.stderr
    assert "refusing to start" in result.stderr


@pytest.mark.slow
def test_flags_beat_environment_beat_file_beat_defaults(tmp_path):
    ctl = f"ipc://{tmp_path}/ctl.sock"
    path = write(tmp_path, f'[daemon]\nheartbeat_timeout = "20s"\nctl = "{ctl}"\nbind = "{free_tcp_endpoint()}"\n'
                           f'[cli]\nctl = "{ctl}"\n')

    def timeout_seen(env_extra: dict[str, str], *flags: str) -> float:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
        env.update(env_extra)
        proc = subprocess.Popen([sys.executable, "-m", "supervisor", "--config", str(path), "daemon", "--insecure",
                                 "--state-dir", str(tmp_path / "state"), *flags],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            status = wait_for(lambda: request(ctl, "status", timeout=1), 20, "the daemon")
            return status["daemon"]["heartbeat_timeout_s"]
        finally:
            proc.terminate()
            proc.wait(timeout=20)

    assert timeout_seen({}) == 20.0  # the file
    assert timeout_seen({"TRAINGUARD_HEARTBEAT_TIMEOUT": "25s"}) == 25.0  # env beats file
    assert timeout_seen({"TRAINGUARD_HEARTBEAT_TIMEOUT": "25s"}, "--heartbeat-timeout", "30s") == 30.0  # flag beats env
    # The CLI reads [cli] ctl from the same file.
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", "--config", str(path), "daemon", "--insecure",
                             "--state-dir", str(tmp_path / "state")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: request(ctl, "ping", timeout=1), 20, "the daemon")
        result = trainguard("--config", str(path), "status", "--json")
        assert result.returncode == 0 and json.loads(result.stdout)["daemon"]["heartbeat_timeout_s"] == 20.0
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.slow
def test_config_show_says_where_each_value_came_from(tmp_path):
    path = write(tmp_path, '[daemon]\n\nheartbeat_timeout = "20s"\n')
    env = {**os.environ, "TRAINGUARD_BIND": "tcp://0.0.0.0:9999"}
    env.pop("TRAINGUARD_HEARTBEAT_TIMEOUT", None)
    result = trainguard("--config", str(path), "config", "show", "--json", env=env)
    assert result.returncode == 0, result.stderr
    rows = {r["setting"]: r for r in json.loads(result.stdout)["settings"]}
    assert rows["daemon.heartbeat_timeout"]["value"] == "20s"
    assert rows["daemon.heartbeat_timeout"]["source"] == f"{path}:3"
    assert rows["daemon.bind"]["source"] == "environment TRAINGUARD_BIND"
    assert rows["daemon.state_dir"]["source"] == "default"
