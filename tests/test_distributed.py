"""Distributed training: 2 real CPU worker processes (gloo) through torch's elastic launcher.

What is checked, and how the runs are made comparable:

- One run of `edgekd train --nproc-per-node 2` whose rank 1 fails in epoch 3 (a one-line error,
  exit 1, well before any timeout), then `torchrun ... -m edgekd train --resume` finishes it.
  Every file of the run directory is written by rank 0, once, atomically.
- Its loss curve against one process with the same global batch (2 x 32 vs 1 x 64). Same
  samples in the same order: augmentation off (its random crops are drawn per rank), the
  permutation is shared and each step's two shards together are the single process's batch
  (`test_shards_together_are_the_single_process_batches`). BatchNorm would still differ (each
  process normalises its own 32 images), so the model is `tiny` with GroupNorm (per-image
  normalisation; `tests/ddp_hooks.py`): the arithmetic is then the same up to float rounding.
- PS-KD on the real `tiny` (with BatchNorm): its per-sample buffer merges both ranks' rows.
- A stuck rank: the other one gives up after `dist_timeout` with a one-line error.
- Two nodes on this machine (`--nnodes 2 --node-rank 0|1`, static rendezvous on 127.0.0.1, gloo,
  one process each): a run end to end, and a node that dies (its launcher and worker killed with
  SIGKILL): the other node stops within seconds naming the lost node, and `--resume` finishes.

Workers get `tests/ddp_hooks.py` through a `sitecustomize.py` on their PYTHONPATH (model
registration, failure injection, a log of which rank wrote which file).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from edgekd import names
from edgekd.train.checkpoint import load_checkpoint

TESTS = Path(__file__).resolve().parent
DATA = "synthetic:n_train=2048,n_test=64"  # 1843 train images: 28 steps of 64 per epoch
SMALL = "synthetic:n_train=256,n_test=64"  # 230 train images: 3 steps of 64 per epoch
RUN_FILES = {names.CONFIG_FILE, names.METRICS_FILE, names.LAST_CKPT, names.BEST_CKPT, names.SUMMARY_FILE}
CURVE = ["--model", "tiny_gn", "--data", DATA, "--epochs", "3", "--lr", "0.2", "--set", "augment=false"]
LAUNCH_TIMEOUT = 180  # seconds; a launch takes ~10 s here (3 interpreters import torch on 2 cores)


def worker_env(tmp: Path, **extra: str) -> dict:
    """The environment for a launch: the test hooks on PYTHONPATH, a private teacher cache."""
    hooks = tmp / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if 'RANK' in os.environ:  # torchrun's workers only\n"
        f"    sys.path.insert(0, {str(TESTS)!r})\n"
        "    import ddp_hooks\n"
        "    ddp_hooks.install()\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKD_TEST_")}
    env.update(PYTHONPATH=str(hooks), EDGEKD_CACHE=str(tmp / "cache"), PYTHONUNBUFFERED="1", **extra)
    return env


def edgekd_train(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgekd", "train", "--no-progress", "--device", "cpu", *args],
                          capture_output=True, text=True, env=env, timeout=LAUNCH_TIMEOUT)


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / names.METRICS_FILE).read_text().splitlines()]


def stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def crashed_then_resumed(tmp_path_factory):
    """A 3-epoch DDP run whose rank 1 fails in epoch 3, then resumed with the torchrun form."""
    tmp = tmp_path_factory.mktemp("ddp")
    run, writes = tmp / "run", tmp / "writes.log"
    env = worker_env(tmp, EDGEKD_TEST_FAIL_RANK="1", EDGEKD_TEST_FAIL_EPOCH="3", EDGEKD_TEST_WRITE_LOG=str(writes))
    t0 = time.monotonic()
    crashed = edgekd_train(["--nproc-per-node", "2", "--batch-size", "32", "--out", str(run), *CURVE], env)
    crash_time = time.monotonic() - t0
    last, metrics = run / names.LAST_CKPT, run / names.METRICS_FILE
    after_crash = SimpleNamespace(files={p.name for p in run.iterdir()},
                                  epoch=load_checkpoint(last)["epoch"] if last.exists() else None,
                                  metrics=[r["epoch"] for r in read_metrics(run)] if metrics.exists() else None)
    env = worker_env(tmp, EDGEKD_TEST_WRITE_LOG=str(writes))
    resumed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                              "--log-dir", str(tmp / "torchrun-logs"),  # else it leaves a /tmp/torchelastic_* dir
                              "-m", "edgekd", "train", "--resume", str(run), "--no-progress"],
                             capture_output=True, text=True, env=env, timeout=LAUNCH_TIMEOUT)
    return SimpleNamespace(run=run, crashed=crashed, crash_time=crash_time, after_crash=after_crash, resumed=resumed,
                           writes=[line.split(" ", 1) for line in writes.read_text().splitlines()])


def test_a_failing_rank_stops_the_run_with_one_line_error(crashed_then_resumed):
    r = crashed_then_resumed
    assert r.crashed.returncode == 1, r.crashed.stderr
    assert stderr_lines(r.crashed) == ["error: distributed training failed: rank 1: injected: a corrupt image seen by "
                                       "rank 1 only"], r.crashed.stderr
    # rank 0 was waiting for rank 1 in a collective: the launcher stopped it at once, long
    # before the 1800 s dist_timeout (the whole launch, 2 epochs included, takes ~15 s here)
    assert r.crash_time < 120
    assert r.after_crash.epoch == 2 and r.after_crash.metrics == [1, 2]
    assert r.after_crash.files == RUN_FILES - {names.SUMMARY_FILE}  # cut short: no summary, no temp files
    assert r.crashed.stdout.count("epoch 1 ") == 1  # only rank 0 logs


def test_resumed_run_is_complete_and_written_by_rank_0_only(crashed_then_resumed):
    r = crashed_then_resumed
    assert r.resumed.returncode == 0, r.resumed.stderr[-3000:]
    assert {p.name for p in r.run.iterdir()} == RUN_FILES  # one checkpoint set, nothing from rank 1
    in_run = [(rank, Path(path).name) for rank, path in r.writes if Path(path).parent == r.run]
    assert in_run and {rank for rank, _ in in_run} == {"0"}, in_run
    ck = load_checkpoint(r.run / names.LAST_CKPT)
    assert ck["epoch"] == 3 and ck["global_step"] == 3 * 28 and ck["world_size"] == 2
    assert [m["epoch"] for m in read_metrics(r.run)] == [1, 2, 3]
    summary = json.loads((r.run / names.SUMMARY_FILE).read_text())
    assert summary["batch_size"] == 32 and summary["world_size"] == 2 and summary["global_batch"] == 64
    assert "global batch 64" in r.crashed.stdout


def test_loss_curve_matches_one_process_with_the_same_global_batch(crashed_then_resumed, tmp_path, monkeypatch):
    """2 x 32 (2 epochs, a crash, a resume) vs 1 x 64 (straight): the same training, to float rounding.

    Tolerances, measured here: epoch 1 agrees to ~1e-5 (float rounding: other reduction order
    of the gradient all-reduce and of 32- vs 64-image kernels). This run then breaks out of its
    initial plateau, which amplifies rounding: the same single-process run with 1 vs 2 threads
    already differs by 1e-3 at epoch 3, DDP vs one process by ~5e-3. Bugs are far outside:
    gradients summed instead of averaged (2x lr) move epoch 1 by 1e-2 and epoch 2 by 2e-2; a
    resume that lost the weights puts epoch 3 back at ~2.32 instead of ~2.14 (8%).
    """
    from edgekd.config import build_config
    from edgekd.models import ZOO
    from edgekd.train.loop import train

    sys.path.insert(0, str(TESTS))
    from ddp_hooks import tiny_gn

    monkeypatch.setitem(ZOO, "tiny_gn", tiny_gn)
    cfg = build_config(overrides=dict(model="tiny_gn", data=DATA, epochs=3, lr=0.2, augment=False, batch_size=64,
                                      device="cpu", threads=1, progress=False, out=str(tmp_path / "single")))
    train(cfg, log=lambda m: None)
    single = [m["train_loss"] for m in read_metrics(tmp_path / "single")]
    ddp = [m["train_loss"] for m in read_metrics(crashed_then_resumed.run)]
    assert single[2] < single[0] - 0.1  # the run really learns: the curve is informative
    assert ddp[0] == pytest.approx(single[0], rel=1e-4)
    assert ddp[1:] == pytest.approx(single[1:], rel=1e-2)


def test_shards_together_are_the_single_process_batches():
    """Every step, the 2 ranks' shards are disjoint and together are the 1-process batch of 2x the size."""
    import numpy as np

    from edgekd.data.loader import BatchLoader

    x = np.zeros((101, 4, 4, 3), dtype=np.uint8)
    y = np.arange(101) % 10
    kw = dict(mean=(0.0,) * 3, std=(1.0,) * 3, train=False, shuffle=True, drop_last=True, seed=5)
    single = BatchLoader(x, y, 20, **kw)
    ranks = [BatchLoader(x, y, 10, rank=r, world_size=2, **kw) for r in range(2)]
    for epoch in (0, 1):
        for loader in (single, *ranks):
            loader.set_epoch(epoch)
        assert len(single) == len(ranks[0]) == len(ranks[1]) == 5
        for s, *parts in zip(single, *ranks):
            a, b = (set(p.index.tolist()) for p in parts)
            assert not a & b and a | b == set(s.index.tolist())
    # evaluation: no padding, every image exactly once over the ranks
    evals = [BatchLoader(x, y, 16, mean=(0.0,) * 3, std=(1.0,) * 3, train=False, rank=r, world_size=2,
                         even_shards=False) for r in range(2)]
    seen = sorted(i for loader in evals for batch in loader for i in batch.index.tolist())
    assert seen == list(range(101))


def test_pskd_buffer_merges_both_ranks(tmp_path):
    run = tmp_path / "run"
    proc = edgekd_train(["--nproc-per-node", "2", "--method", "pskd", "--model", "tiny", "--data", SMALL,
                         "--epochs", "2", "--batch-size", "32", "--out", str(run)], worker_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # `edgekd train` draws curves.png at the end when the [plot] extra is installed (rank 0 only)
    assert {p.name for p in run.iterdir()} - {"curves.png"} == RUN_FILES
    buffer = load_checkpoint(run / names.LAST_CKPT)["method_state"]["buffer"]
    # the images both ranks trained on in epochs 1 and 2 (the rank-0 process saved the buffer)
    from edgekd.data import load_dataset
    from edgekd.data.loader import BatchLoader

    data = load_dataset(SMALL, 0.1, 0)
    used = set()
    for rank in (0, 1):
        loader = BatchLoader(data.x_train, data.y_train, 32, (0.0,) * 3, (1.0,) * 3, train=False, shuffle=True,
                             drop_last=True, seed=0, rank=rank, world_size=2)
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            used |= {i for batch in loader for i in batch.index.tolist()}
    assert set(torch.nonzero(buffer["seen"]).flatten().tolist()) == used
    rows = buffer["pred"][buffer["seen"]].float()
    assert torch.allclose(rows.sum(1), torch.ones(len(rows)), atol=1e-2)  # probabilities (fp16)
    assert all(torch.isfinite(torch.tensor(m["train_loss"])) for m in read_metrics(run))


def test_a_stuck_rank_times_out_with_one_line_error(tmp_path):
    env = worker_env(tmp_path, EDGEKD_TEST_FAIL_RANK="1", EDGEKD_TEST_FAIL_EPOCH="1", EDGEKD_TEST_FAIL_MODE="hang")
    t0 = time.monotonic()
    proc = edgekd_train(["--nproc-per-node", "2", "--model", "tiny", "--data", SMALL, "--epochs", "1",
                         "--batch-size", "32", "--out", str(tmp_path / "run"), "--set", "dist_timeout=4"], env)
    assert proc.returncode == 1
    (line,) = stderr_lines(proc)
    assert line.startswith("error: distributed training failed: rank 0: a collective waited longer than "
                           "dist_timeout"), line
    assert time.monotonic() - t0 < 90  # not the hour rank 1 sleeps


# ---- two nodes on one machine ---------------------------------------------------------------------

PLOTS = {"curves.png"}  # drawn by the launcher after a run when matplotlib is installed
# tiny model, 3 global steps of 2 x 32 per epoch; a short dist_timeout bounds any wait on a lost peer
TWO_NODES = ["--model", "tiny", "--data", SMALL, "--batch-size", "32", "--set", "dist_timeout=30"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(node: int, port: int, args: list[str], env: dict) -> subprocess.Popen:
    """`edgekd train` as node `node` of 2 (one process), static rendezvous on 127.0.0.1:port."""
    return subprocess.Popen([sys.executable, "-m", "edgekd", "train", "--no-progress", "--device", "cpu",
                             "--nproc-per-node", "1", "--nnodes", "2", "--node-rank", str(node),
                             "--master-addr", "127.0.0.1", "--master-port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # its own process group: a test can kill the "node"


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_two_nodes(args: list[str], env: dict, node1_args: list[str] | None = None):
    """Both nodes to completion: [(returncode, stdout, stderr)] of node 0 and node 1."""
    port = free_port()
    nodes = [start_node(0, port, args, env), start_node(1, port, node1_args or args, env)]
    try:
        outputs = [p.communicate(timeout=LAUNCH_TIMEOUT) for p in nodes]
        return [(p.returncode, out, err) for p, (out, err) in zip(nodes, outputs)]
    finally:
        for p in nodes:
            if p.poll() is None:
                kill_group(p)


def test_two_nodes_train_end_to_end(tmp_path):
    run, elsewhere, writes = tmp_path / "run", tmp_path / "node1-out", tmp_path / "writes.log"
    env = worker_env(tmp_path, EDGEKD_TEST_WRITE_LOG=str(writes))
    args = [*TWO_NODES, "--epochs", "2"]
    (rc0, out0, err0), (rc1, out1, err1) = run_two_nodes([*args, "--out", str(run)], env,
                                                         [*args, "--out", str(elsewhere)])
    assert rc0 == 0 and rc1 == 0, err0[-3000:] + err1[-3000:]
    assert {p.name for p in run.iterdir()} - PLOTS == RUN_FILES
    assert not elsewhere.exists()  # node 1 writes nothing: the run directory is node 0's
    ck = load_checkpoint(run / names.LAST_CKPT)
    assert ck["epoch"] == 2 and ck["global_step"] == 2 * 3 and ck["world_size"] == 2
    summary = json.loads((run / names.SUMMARY_FILE).read_text())
    assert summary["world_size"] == 2 and summary["global_batch"] == 64
    assert {line.split(" ", 1)[0] for line in writes.read_text().splitlines()} == {"0"}
    assert "global batch 64" in out0 and "epoch 2 " in out0 and "epoch" not in out1  # rank 0 logs
    assert "curves" not in out1  # node 1 has no run directory to plot


def test_a_lost_node_stops_the_other_with_one_line_and_resume_finishes(tmp_path):
    """Node 1 (its launcher and its worker) is killed with SIGKILL while rank 0 waits for it in epoch 2."""
    run, marker, writes = tmp_path / "run", tmp_path / "rank1.pid", tmp_path / "writes.log"
    env = worker_env(tmp_path, EDGEKD_TEST_FAIL_RANK="1", EDGEKD_TEST_FAIL_EPOCH="2", EDGEKD_TEST_FAIL_MODE="hang",
                     EDGEKD_TEST_FAIL_MARKER=str(marker))
    args = [*TWO_NODES, "--epochs", "2", "--out", str(run)]
    port = free_port()
    node0, node1 = start_node(0, port, args, env), start_node(1, port, args, env)
    worker = None
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not marker.exists() and time.monotonic() < deadline and node0.poll() is None:
            time.sleep(0.2)
        assert marker.exists(), node0.communicate(timeout=5)[1][-3000:] if node0.poll() is not None else "no marker"
        worker = int(marker.read_text())
        t_kill = time.monotonic()
        kill_group(node1)  # the node dies: its launcher (elastic agent) ...
        os.kill(worker, signal.SIGKILL)  # ... and its worker (torchrun starts workers in their own session)
        _, err0 = node0.communicate(timeout=LAUNCH_TIMEOUT)
        stopped_after = time.monotonic() - t_kill
    finally:
        for p in (node0, node1):
            if p.poll() is None:
                kill_group(p)
        if worker is not None:
            try:
                os.kill(worker, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert node0.returncode == 1
    (line,) = [ln for ln in err0.splitlines() if ln.strip()]
    assert line.startswith("error: distributed training failed: lost node 1: rank 0: lost contact"), line
    assert stopped_after < 30, stopped_after  # a closed connection, not the 30 s dist_timeout
    assert load_checkpoint(run / names.LAST_CKPT)["epoch"] == 1
    assert {p.name for p in run.iterdir()} == RUN_FILES - {names.SUMMARY_FILE}  # no lock, no temp files

    env = worker_env(tmp_path, EDGEKD_TEST_WRITE_LOG=str(writes))
    (rc0, out0, err0), (rc1, _, err1) = run_two_nodes(["--resume", str(run)], env)
    assert rc0 == 0 and rc1 == 0, err0[-3000:] + err1[-3000:]
    assert {p.name for p in run.iterdir()} - PLOTS == RUN_FILES
    ck = load_checkpoint(run / names.LAST_CKPT)
    assert ck["epoch"] == 2 and ck["global_step"] == 2 * 3 and ck["world_size"] == 2
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2]
    assert {line.split(" ", 1)[0] for line in writes.read_text().splitlines()} == {"0"}


def test_cli_distributed_option_errors():
    from typer.testing import CliRunner

    from edgekd.cli import app

    res = CliRunner().invoke(app, ["train", "--nproc-per-node", "0"])
    assert res.exit_code == 1 and res.output.strip() == "error: --nproc-per-node must be >= 1, got 0"
    res = CliRunner().invoke(app, ["train", "--nproc-per-node", "2", "--set", "dist_timeout=0"])
    assert res.exit_code == 1 and "dist_timeout must be > 0" in res.output
    res = CliRunner().invoke(app, ["train", "--master-port", "29511"])
    assert res.exit_code == 2 and "rendezvous options" in res.output  # a usage error


def _failure(rank_data: dict | None, exitcode: int = 1, timestamp: int = 0, signal_name: str = ""):
    return SimpleNamespace(error_file_data={"edgekd": rank_data} if rank_data else {}, exitcode=exitcode,
                           timestamp=timestamp, signal_name=lambda: signal_name)


def test_describe_failure_names_the_root_cause():
    from edgekd.train.distributed import describe_failure

    secondary = {"message": "lost contact", "primary": False, "time": 1.0}
    assert describe_failure({0: _failure(secondary), 1: _failure({"message": "bad image", "time": 2.0})}) == \
        "rank 1: bad image"
    # a rank that crashed without a word beats one that only noticed it and one the agent stopped
    assert describe_failure({0: _failure(secondary), 1: _failure(None, -9, signal_name="SIGKILL"),
                             2: _failure(None, -15, signal_name="SIGTERM")}) == \
        "rank 1 was killed by SIGKILL (out of memory?)"
    assert describe_failure({0: _failure(secondary), 1: _failure(None, -15, signal_name="SIGTERM")}) == \
        "rank 0: lost contact"


def test_describe_failure_names_a_lost_node():
    """Every rank here only lost contact and the run spans nodes: the cause is on another node."""
    from edgekd.train.distributed import describe_failure

    lost = {"message": "lost contact", "primary": False, "time": 1.0, "lost": True, "node": 0, "nodes": 2}
    assert describe_failure({0: _failure(lost)}) == "lost node 1: rank 0: lost contact"
    assert describe_failure({3: _failure({**lost, "node": 1, "nodes": 3})}) == \
        "lost one of nodes 0, 2: rank 3: lost contact"
    assert describe_failure({0: _failure({**lost, "nodes": 1})}) == "rank 0: lost contact"  # one node: no guess
    assert describe_failure({0: _failure({**lost, "lost": False})}) == "rank 0: lost contact"  # PeerFailedError
