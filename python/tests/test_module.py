"""Single-process tests of the m2n module: what it exports, its documentation, its errors, and
option errors raised before any peer is needed."""

import pickle
import sys
import time

import pytest

import m2n


def test_import_and_build_facts():
    assert m2n.__version__ == "0.1.0"
    transports = m2n.available_transports()
    assert "ucx" in transports, transports
    names = [row[0] for row in m2n.environment_table()]
    assert "M2N_RANK" in names and "M2N_SLOT_BYTES" in names


def test_help_is_useful():
    doc = m2n.Group.__doc__
    assert "torchrun" in doc and "zero-copy" in doc and "release()" in doc
    for name in ["send", "send_many", "receive", "receive_many", "release", "register", "close",
                 "abort", "send_on_stream", "receive_on_stream", "release_on_stream"]:
        assert len(getattr(m2n.Group, name).__doc__) > 80, name


def test_option_errors_carry_code_and_message():
    with pytest.raises(m2n.InvalidArgumentError) as info:
        m2n.Group(num_senders=2, num_receivers=2, rank=0, world_size=5, timeout=1.0)
    assert info.value.code == "INVALID_ARGUMENT"
    assert "world size 5 != M + N = 2 + 2" in info.value.message
    assert str(info.value).startswith("INVALID_ARGUMENT: ")
    assert isinstance(info.value, ValueError)
    with pytest.raises(m2n.InvalidArgumentError, match='"gpu" is neither "host" nor "cuda"'):
        m2n.Group(num_senders=1, num_receivers=1, rank=0, world_size=2, slot_memory="gpu")


def test_errors_map_codes_and_pickle():
    e = m2n.errors.error_for(4, "DEADLINE_EXCEEDED", "no message from rank 3 within 5000 ms")
    assert type(e) is m2n.DeadlineExceededError and isinstance(e, TimeoutError)
    assert isinstance(m2n.errors.error_for(14, "UNAVAILABLE", "x"), ConnectionError)
    assert type(m2n.errors.error_for(99, "UNKNOWN", "x")) is m2n.Error
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is type(e) and back.message == e.message and back.code == e.code


def test_launch_environment():
    env = m2n.launch.rank_environment(3, 4, 12345, base={"PATH": "/bin"})
    assert env == {"PATH": "/bin", "M2N_RANK": "3", "M2N_WORLD_SIZE": "4",
                   "M2N_LOCAL_RANK": "3", "M2N_LOCAL_WORLD_SIZE": "4",
                   "M2N_MASTER_ADDR": "127.0.0.1", "M2N_MASTER_PORT": "12345"}


def test_launch_stops_the_others_when_one_fails():
    start = time.monotonic()
    codes = m2n.launch.spawn([sys.executable, "-c",
                              "import os, sys, time; r = int(os.environ['M2N_RANK']);"
                              " sys.exit(3) if r == 1 else time.sleep(60)"], 3, timeout=30)
    assert codes[1] == 3 and codes[0] != 0 and codes[2] != 0, codes
    assert time.monotonic() - start < 20, "the other ranks were not stopped when rank 1 failed"
    assert m2n.launch.main(["-n", "2", sys.executable, "-c", "pass"]) == 0


def test_stubs_are_installed():
    import importlib.resources
    files = importlib.resources.files("m2n")
    assert (files / "py.typed").is_file()
    stub = (files / "_m2n.pyi").read_text()
    assert "class Group" in stub and "def receive_many" in stub
    assert "def receive(self, peer: int, timeout: float = 60.0) -> Message" in stub


def test_detect_launch_reads_the_launcher_and_names_a_bad_variable(monkeypatch):
    for name in ("M2N_RANK", "RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PMI_RANK", "2")
    monkeypatch.setenv("PMI_SIZE", "4")
    info = m2n._m2n.detect_launch()
    assert (info["rank"], info["world_size"]) == (2, 4), info
    monkeypatch.setenv("PMI_RANK", "two")
    with pytest.raises(m2n.Error, match="PMI_RANK"):
        m2n._m2n.detect_launch()


def test_spawn_refuses_a_missing_program():
    with pytest.raises(FileNotFoundError, match="no-such-program"):
        m2n.launch.spawn(["no-such-program-m2n"], 2)
