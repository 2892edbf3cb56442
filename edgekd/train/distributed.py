"""Distributed training on torch.distributed: the worker entry and the elastic launcher.

Two ways to start N processes, both through torch's elastic agent (torchrun):

- `edgekd train --nproc-per-node N ...` calls `launch`, which runs `torch.distributed.run` in
  this process with `-m edgekd train --config <resolved config>` as the worker command;
- `torchrun --nproc-per-node N -m edgekd train ...` starts the workers directly.

Each worker calls `train_entry`, which sees `WORLD_SIZE > 1` in its environment, joins the
process group (gloo on CPU, NCCL on CUDA, with `cfg.dist_timeout`), trains, and leaves it.

Failures: when one worker fails the elastic agent stops the others at once; a collective that
waits longer than `dist_timeout` raises instead of hanging. Every failing worker records its
error in torchelastic's error file, and `launch` turns the root cause into one line
(`error: distributed training failed: rank R: ...`, exit 1).

What ranks do together during a run (share from rank 0, broadcast, all-reduce, the peer-failure
error) is in `edgekd.train.collective`; this module imports the fit loop, never the reverse.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Optional

from edgekd.config import TrainConfig
from edgekd.errors import EdgekdError, first_line
from edgekd.train.collective import PeerFailedError, local_rank, resolve_device

# Set by `launch` for its workers: they record errors for the launcher instead of printing them.
LAUNCHED_ENV = "EDGEKD_ELASTIC_LAUNCH"
ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"


def env_world_size() -> int:
    """WORLD_SIZE from the environment (set by torchrun), 1 when absent."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise EdgekdError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None


# ---------------------------------------------------------------- worker side

def init_process_group(cfg: TrainConfig) -> None:
    """Join the process group torchrun describes in the environment: gloo on CPU, NCCL on CUDA."""
    import torch
    import torch.distributed as dist

    if cfg.dist_timeout <= 0:
        raise EdgekdError(f"dist_timeout must be > 0 seconds, got {cfg.dist_timeout}")
    device = resolve_device(cfg.device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        # abort the communicator and end the process on a NCCL error or timeout (instead of hanging)
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        local = local_rank()
        if local >= torch.cuda.device_count():
            raise EdgekdError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
                              f"use --nproc-per-node <= {torch.cuda.device_count()}")
        torch.cuda.set_device(local)
    try:
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=cfg.dist_timeout))
    except (RuntimeError, ValueError) as exc:  # torch.distributed.DistError is a RuntimeError
        raise EdgekdError(f"cannot join the process group ({backend}): {first_line(exc)}") from None


def train_entry(cfg: TrainConfig):
    """Train in this process; under torchrun (WORLD_SIZE > 1) as one rank of a DDP run.

    A single process returns the `RunResult`. A distributed worker never returns: it ends the
    process, with 0 once every rank is done, or 1 after recording its error (see
    `_report_worker_failure`).
    """
    from edgekd.train.loop import train

    if env_world_size() <= 1:
        return train(cfg)
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    # the elastic agent stops the surviving ranks with SIGTERM when one fails: unwind (run lock released,
    # temp files removed) instead of dying mid-write, then die by the same signal so the launcher still
    # tells a rank it stopped from the one that failed (describe_failure)
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        init_process_group(cfg)
        rank = dist.get_rank()
        train(cfg)
        dist.barrier()  # leave together: no rank tears its connections down while another still works
        dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - a worker reports every failure, then exits 1
        _report_worker_failure(exc, rank)
    # The run is complete and rank 0 has written every file. Skip interpreter teardown: gloo's
    # threads were seen to abort a finished worker there ("terminate called without an active
    # exception"), which the elastic agent would report as a failed run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class _Terminated(BaseException):
    """SIGTERM, raised where the worker was so that every `with` block unwinds."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


def _gloo_detail(exc: BaseException) -> str:
    """The informative part of a gloo/NCCL error: no "[source.cc:78]" prefix, no boilerplate advice."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", first_line(exc, 2000))
    return re.split(r"\.\s+This is typically caused by", text)[0].rstrip(".")


def _report_worker_failure(exc: BaseException, rank: int) -> None:
    """Record why this rank failed (torchelastic error file), print it unless `launch` will, exit 1.

    Ranks that only noticed another rank's failure (`PeerFailedError`, a broken or timed-out
    collective) are marked secondary so the launcher reports the root cause.
    """
    import torch.distributed as dist

    if isinstance(exc, _Terminated):  # cleaned up on the way here: now end as the signal would have
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    if isinstance(exc, KeyboardInterrupt):
        raise SystemExit(130)
    if isinstance(exc, SystemExit):
        raise exc
    lost = False  # this rank's connections to another broke: the cause is elsewhere (maybe another node)
    if isinstance(exc, PeerFailedError):
        primary, message = False, first_line(exc)
    elif isinstance(exc, EdgekdError):
        primary, message = True, first_line(exc)
    elif isinstance(exc, dist.DistError) or "gloo" in str(exc).lower() or "nccl" in str(exc).lower():
        timed_out = "timeout" in str(exc).lower() or "timed out" in str(exc).lower()
        primary = timed_out  # a timeout is a cause in itself (a hung rank); a closed connection is not
        lost = not timed_out
        detail = _gloo_detail(exc)
        message = (f"a collective waited longer than dist_timeout (another rank is stuck or slow): {detail}"
                   if timed_out else f"lost contact with the other processes (another rank probably failed): {detail}")
    else:  # a bug: keep the traceback
        primary, message = True, f"{type(exc).__name__}: {first_line(exc)}"
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    error_file = os.environ.get(ERROR_FILE_ENV)
    if error_file:
        data = {"message": message, "timestamp": int(time.time()),
                "edgekd": {"rank": rank, "message": message, "primary": primary, "time": time.time(), "lost": lost,
                           # torchrun's node index and node count: a launcher names the node it lost
                           "node": int(os.environ.get("GROUP_RANK", "0")),
                           "nodes": int(os.environ.get("GROUP_WORLD_SIZE", "1"))}}
        try:
            Path(error_file).parent.mkdir(parents=True, exist_ok=True)
            Path(error_file).write_text(json.dumps(data))
        except OSError:
            pass
    if not os.environ.get(LAUNCHED_ENV) and (primary or rank == 0):
        print(f"error: rank {rank}: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # exit now: interpreter shutdown with live gloo/NCCL threads can take seconds, and the elastic
    # agent only stops the other ranks once this process is gone
    os._exit(1)


# ---------------------------------------------------------------- launcher side

RENDEZVOUS_KEYS = ("nnodes", "node_rank", "master_addr", "master_port", "rdzv_backend", "rdzv_endpoint", "rdzv_id")


def build_torchrun_args(nproc: int, config_file: str, progress: bool, rendezvous: dict,
                        log_dir: Optional[str] = None) -> list[str]:
    """torchrun's command line for `nproc` workers running `python -m edgekd train --config FILE`.

    No restarts: a failed rank ends the run (a training step cannot be replayed by one rank).
    `log_dir` holds torchelastic's per-rank error files (torchrun makes a /tmp dir otherwise).
    """
    args = ["--nproc-per-node", str(nproc), "--max-restarts", "0"]
    if log_dir:
        args += ["--log-dir", log_dir]
    for key in RENDEZVOUS_KEYS:
        value = rendezvous.get(key)
        if value is not None and value != "":
            args += [f"--{key.replace('_', '-')}", str(value)]
    unknown = set(rendezvous) - set(RENDEZVOUS_KEYS)
    if unknown:
        raise EdgekdError(f"unknown rendezvous option(s): {', '.join(sorted(unknown))}")
    return args + ["--module", "edgekd", "train", "--config", config_file,
                   "--progress" if progress else "--no-progress"]


def launch(nproc: int, cfg: TrainConfig, rendezvous: Optional[dict] = None) -> int:
    """Run `cfg` on `nproc` local workers through torch's elastic launcher; returns 0 or raises.

    `rendezvous` takes torchrun's multi-node options by their config names (`nnodes`,
    `node_rank`, `master_addr`, `master_port`, `rdzv_backend`, `rdzv_endpoint`, `rdzv_id`).
    Without them the run is single-node on a free local port. Any worker's failure stops all
    workers and is raised here as one EdgekdError naming the rank and its error.
    """
    import logging

    quiet = os.environ.get("EDGEKD_DEBUG_LAUNCH") is None
    if quiet and "torch" not in sys.modules and "TORCH_CPP_LOG_LEVEL" not in os.environ:
        # this (launcher) process's C++ warnings are store-connection retries whose outcome the
        # Python exception reports; set for the import only, so the workers keep the default
        os.environ["TORCH_CPP_LOG_LEVEL"] = "FATAL"
        try:
            import torch  # noqa: F401 - reads TORCH_CPP_LOG_LEVEL once, at import
        finally:
            del os.environ["TORCH_CPP_LOG_LEVEL"]
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError

    from edgekd.config import save_config

    if nproc < 1:
        raise EdgekdError(f"--nproc-per-node must be >= 1, got {nproc}")
    if cfg.dist_timeout <= 0:
        raise EdgekdError(f"dist_timeout must be > 0 seconds, got {cfg.dist_timeout}")
    rendezvous = {k: v for k, v in (rendezvous or {}).items() if v is not None}
    saved_env = dict(os.environ)
    # the agent's progress logs and its multi-line failure table would bury the one-line error
    loggers = [lg for name, lg in logging.root.manager.loggerDict.items()
               if name.startswith("torch.distributed") and isinstance(lg, logging.Logger)] if quiet else []
    saved_levels = [lg.level for lg in loggers]
    with tempfile.TemporaryDirectory(prefix="edgekd-launch-") as tmp:
        config_file = str(Path(tmp) / "config.yaml")
        save_config(cfg, config_file)  # the resolved config: every worker runs exactly this
        try:
            args = torchrun.parse_args(build_torchrun_args(nproc, config_file, cfg.progress, rendezvous,
                                                           log_dir=str(Path(tmp) / "logs")))
        except SystemExit:
            raise EdgekdError("invalid rendezvous options for torchrun (see `torchrun --help`)") from None
        os.environ[LAUNCHED_ENV] = "1"
        if "OMP_NUM_THREADS" not in os.environ:  # share the cores instead of oversubscribing them
            os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        try:
            torchrun.run(args)
        except ChildFailedError as exc:
            raise EdgekdError(f"distributed training failed: {describe_failure(exc.failures)}") from None
        except SignalException as exc:
            raise EdgekdError(f"distributed training stopped by signal {exc.sigval.name}") from None
        except RendezvousError as exc:  # unreachable endpoint, nodes missing past the join timeout, ...
            cause = f" ({first_line(exc.__cause__)})" if exc.__cause__ is not None else ""
            what = first_line(exc).replace(" See inner exception for details.", "")
            raise EdgekdError(f"distributed launch failed: rendezvous: {what}{cause}") from None
        except (RuntimeError, ValueError) as exc:  # other launch errors (bad options, address in use, ...)
            raise EdgekdError(f"distributed launch failed: {first_line(exc)}") from None
        finally:
            for lg, level in zip(loggers, saved_levels):
                lg.setLevel(level)
            os.environ.clear()
            os.environ.update(saved_env)
    return 0


def describe_failure(failures: dict) -> str:
    """One line for the root cause among torchelastic's `{rank: ProcessFailure}`.

    In order of preference: a rank's own error (recorded by `train_entry` as primary), the
    earliest first; a rank that died without recording anything (crash, signal, out-of-memory
    kill), since the others only noticed it; a rank that only noticed another's failure.
    """
    recorded, infos = [], {}
    for rank, failure in failures.items():
        data = failure.error_file_data
        info = data.get("edgekd") if isinstance(data, dict) else None
        if info:
            recorded.append((not info.get("primary", True), float(info.get("time", 0.0)), int(rank), info["message"]))
            infos[int(rank)] = info
    primary = [r for r in recorded if not r[0]]
    if primary:
        _, _, rank, message = min(primary)
        return f"rank {rank}: {message}"
    silent = [r for r in failures if int(r) not in {rec[2] for rec in recorded}]
    # the agent stops the surviving ranks with SIGTERM and lists them too: those are not the cause
    crashed = [r for r in silent if failures[r].exitcode != -signal.SIGTERM]
    if crashed or not recorded:
        rank = min(crashed or silent, key=lambda r: (failures[r].timestamp, int(r)))
        failure = failures[rank]
        if failure.exitcode < 0:
            hint = " (out of memory?)" if failure.signal_name() == "SIGKILL" else ""
            return f"rank {rank} was killed by {failure.signal_name()}{hint}"
        return f"rank {rank} exited with code {failure.exitcode}"
    _, _, rank, message = min(recorded)
    lost = lost_node(infos[rank])
    return f"lost {lost}: rank {rank}: {message}" if lost else f"rank {rank}: {message}"


def lost_node(info: dict) -> str:
    """`node 1` when every rank of this node only lost contact and the run spans other nodes: the cause
    (a node that died, or its network) is there, and that node's own output (if any) names it; '' otherwise."""
    node, nodes = int(info.get("node", 0)), int(info.get("nodes", 1))
    if not info.get("lost") or nodes <= 1:
        return ""
    others = [str(n) for n in range(nodes) if n != node]
    return f"node {others[0]}" if len(others) == 1 else f"one of nodes {', '.join(others)}"
