"""The thread-count default (engine/lm/threads.py) and the launcher-shortfall line
(engine/launch.py): torch-free, from the environment a launcher sets."""
from __future__ import annotations

from engine.launch import launch_shortfall, requested_processes
from engine.lm.threads import plan


def test_default_threads_do_not_oversubscribe():
    quiet = dict(n_cores=8, load=0.0)
    assert plan(3, {}, **quiet).threads == 3                                   # --threads wins
    assert plan(None, {"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}, **quiet).threads == 4
    assert plan(None, {"LOCAL_WORLD_SIZE": "4"}, n_cores=2, load=0.0).threads == 1  # never 0
    assert plan(None, {"OMP_NUM_THREADS": "3"}, **quiet).threads == 3          # one process
    assert plan(None, {}, **quiet).threads == 8
    assert plan(None, {"OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, **quiet).threads == 4
    assert "2 local processes" in plan(None, {"LOCAL_WORLD_SIZE": "2"}, n_cores=2, load=0).why
    # a busy machine: only the free cores (one at least), said with the load
    busy = plan(None, {}, n_cores=2, load=19.2)
    assert busy.threads == 1 and "load 19.2" in busy.why
    assert plan(None, {}, n_cores=8, load=3.0).threads == 5
    assert plan(None, {"LOCAL_WORLD_SIZE": "2"}, n_cores=8, load=1.0).threads == 4


def test_accelerate_starting_fewer_processes_is_named():
    cpu = {"ACCELERATE_MIXED_PRECISION": "no", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    cmd = ["accelerate", "launch", "--cpu", "--num_processes", "2", "-m", "app.cli"]
    msg = launch_shortfall(cpu, cmd)
    assert msg and "asked for 2 processes but started 1" in msg and "\n" not in msg
    assert "more than 1 process" in launch_shortfall(cpu, ["python"])        # count unknown
    ranks = {**cpu, "WORLD_SIZE": "2"}
    assert launch_shortfall(ranks, ["accelerate", "launch", "--num_processes=2"]) is None
    assert launch_shortfall({}, cmd) is None                                   # not accelerate
    one = {"ACCELERATE_MIXED_PRECISION": "no"}                                 # asked for one
    assert launch_shortfall(one, ["accelerate", "launch", "-m", "x"]) is None
    assert requested_processes(["--num-processes", "4"]) == 4
