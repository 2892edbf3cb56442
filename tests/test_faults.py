"""The fault battery: bad input, faults and concurrency, command by command (issue 15).

The contract (README: exit codes and the bad-input table): every command answers bad input with
exit 1 and one `error:` line (2 for usage, 3 for a failed proof), never a traceback, nothing
half-written where an output should be, and nothing from a file ever executed. Each case here
asserts the exit code, the absence of a traceback (in process: no exception other than SystemExit
escaped the command) and what is or is not left on disk. Kept fast: a tiny synthetic dataset
(8 px), the `tiny` model, one epoch.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgekd import io as eio
from edgekd.cli import app
from edgekd.data.readers import read_spec
from edgekd.data.unpickle import UnsafePickleError, load_restricted
from edgekd.errors import DataError, EdgekdError
from edgekd.lock import LOCK_FILE, RunLockedError, lock_holder, run_lock
from test_images import png16  # the hand-written 16-bit PNG (tests/ is on sys.path, as for imagedata)

SYN = "synthetic:n_train=40,n_test=20,size=8"
TRAIN = ["train", "--data", SYN, "--model", "tiny", "--epochs", "1", "--batch-size", "8", "--no-progress"]
FAST_BENCH = ["--batch-sizes", "1", "--warmup", "1", "--min-time", "0.01", "--min-iters", "1"]


# ---- helpers ------------------------------------------------------------------------------------


def invoke(args: list[str]):
    """Run an `edgekd` command in process; an exception other than SystemExit is a traceback in a shell."""
    res = CliRunner().invoke(app, [str(a) for a in args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        import traceback

        tb = "".join(traceback.format_exception(type(res.exception), res.exception, res.exception.__traceback__))
        pytest.fail(f"traceback instead of one line (exit {res.exit_code}):\n{tb}")
    return res


def expect_error(args: list[str], match: str, code: int = 1):
    """The command exits `code` with exactly one `error:` line containing `match`, and no traceback."""
    res = invoke(args)
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    assert len(lines) == 1 and match in lines[0], res.output
    return lines[0]


def run_tool(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run `edgekd-run` in process: (exit code, stdout, stderr)."""
    from edgekd.runtime.__main__ import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def hidden(directory: Path) -> list[str]:
    """Hidden leftovers (temp files, staging folders) in a directory, sorted."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".")) if directory.exists() else []


def dead_pid() -> int:
    """A pid that belonged to a process which has exited (and was reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


class Exploit:
    """Pickles to `os.system(cmd)`: what a crafted CIFAR batch would run under plain pickle.load."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def cifar_folder(root: Path, batch: dict | None = None, raw: bytes | None = None) -> Path:
    """A CIFAR-10 python folder: a valid test batch and one train batch (`batch` or `raw` pickle bytes)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def good(n: int) -> dict:
        return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n))}

    (root / "data_batch_1").write_bytes(raw if raw is not None else pickle.dumps(good(10) if batch is None else batch))
    (root / "test_batch").write_bytes(pickle.dumps(good(10)))
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One real tiny training run (best.pt, last.pt, config.yaml ...)."""
    out = tmp_path_factory.mktemp("faults") / "run"
    res = invoke([*TRAIN, "--out", out])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory) -> Path:
    """The run exported to ONNX (model.onnx + manifest.json)."""
    out = tmp_path_factory.mktemp("faults") / "onnx"
    res = invoke(["export", run_dir, "--out", out])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture
def no_space(monkeypatch):
    """Every atomic write fails as a full disk does on Linux: at fsync (delayed allocation) with ENOSPC."""

    def full(_path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(eio, "_fsync_file", full)


# ---- security: nothing from a file is executed --------------------------------------------------


def test_crafted_cifar_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    root = cifar_folder(tmp_path / "cifar", raw=pickle.dumps(Exploit(f"touch {marker}")))
    with pytest.raises(UnsafePickleError, match=r"refuses to load posix\.system"):
        read_spec(f"cifar:{root}")
    assert not marker.exists()


@pytest.mark.parametrize("command", ["train", "bench", "export"])
def test_crafted_cifar_pickle_refused_by_every_command(tmp_path, command, request):
    marker = tmp_path / "PWNED"
    root = cifar_folder(tmp_path / "cifar", raw=pickle.dumps(Exploit(f"touch {marker}")))
    if command == "train":
        args = ["train", "--data", f"cifar:{root}", "--model", "tiny", "--out", tmp_path / "o"]
    elif command == "bench":
        args = ["bench", request.getfixturevalue("exported") / "model.onnx", "--data", f"cifar:{root}", *FAST_BENCH]
    else:
        args = ["export", request.getfixturevalue("run_dir"), "--data", f"cifar:{root}", "--out", tmp_path / "o"]
    expect_error(args, "refuses to load posix.system")
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_restricted_unpickler_admits_numpy_batches_of_numpy_1_and_2():
    batch = {b"data": np.arange(6, dtype=np.uint8).reshape(2, 3), b"labels": [0, 1], "batch_label": b"x"}
    for proto in (2, pickle.HIGHEST_PROTOCOL):
        blob = pickle.dumps(batch, protocol=proto)
        old = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")  # as numpy 1 (and CIFAR) wrote it
        for b in (blob, old):
            got = load_restricted(b, "t", keys=("data", "labels", "batch_label"))
            np.testing.assert_array_equal(got[b"data"], batch[b"data"])
    scalar = pickle.dumps({"num_vis": np.int64(3072)})
    assert load_restricted(scalar, "t", keys=("num_vis",))["num_vis"] == 3072


@pytest.mark.parametrize("payload, match", [
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"evil": 1}), "unexpected key b'evil'"),
    (pickle.dumps([1, 2]), "expected a dict"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"f": Path("x")}), "refuses to load"),
    (b"\x80\x04garbage", "cannot read"),
])
def test_restricted_unpickler_refuses_the_unexpected(payload, match):
    with pytest.raises(DataError, match=match):
        load_restricted(payload, "t", keys=("data", "labels", "f"))


def test_npz_with_pickled_objects_is_refused(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, x_train=np.array([Exploit("true")], dtype=object), y_train=np.zeros(1), x_test=np.zeros(1),
             y_test=np.zeros(1))
    expect_error([*TRAIN, "--data", f"npz:{p}", "--out", tmp_path / "o"], "cannot read npz dataset")


# ---- data: tracebacks turned into one line ---------------------------------------------------------


@pytest.mark.parametrize("batch, match", [
    ({b"data": np.zeros((10, 3000), np.uint8), b"labels": list(range(10))}, "a CIFAR batch is (N, 3072)"),
    ({b"data": np.zeros((10, 3072), np.uint8), b"labels": [0, 1]}, "10 images but labels of shape (2,)"),
    ({b"labels": [0]}, "batch lacks data"),
    ({b"data": np.zeros((1, 3072), np.float32), b"labels": [0]}, "must be integers"),
    ({b"data": np.full((1, 3072), 300, np.int64), b"labels": [0]}, "pixel values must be 0..255"),
])
def test_cifar_batch_with_wrong_contents(tmp_path, batch, match):
    root = cifar_folder(tmp_path / "cifar", batch=batch)
    expect_error([*TRAIN, "--data", f"cifar:{root}", "--out", tmp_path / "o"], match)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("spec, match", [
    ("synthetic:size=0", "size=0 is out of range"),
    ("synthetic:n_train=0", "n_train=0 must be at least 1"),
    ("synthetic:size=99999", "out of range"),
    ("imagenet:/x", "unknown data spec"),
])
def test_bad_synthetic_and_unknown_specs(tmp_path, spec, match):
    expect_error(["train", "--data", spec, "--model", "tiny", "--out", tmp_path / "o"], match)
    assert not (tmp_path / "o").exists()


def _image_folder(root: Path, per_class: int = 60, bad: int = 0) -> Path:
    for split, n in (("train", per_class), ("test", 4)):
        for c in range(2):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8, 3), 60 * c + i % 9, np.uint8)).save(d / f"{i:03d}.png")
    for i in range(bad):
        (root / "train" / "c0" / f"{i:03d}.png").write_bytes(b"broken")
    return root


def test_symlink_loop_class_folder_is_one_line(tmp_path):
    root = _image_folder(tmp_path / "ds", per_class=4)
    os.symlink(root / "train" / "loop", root / "train" / "loop")
    expect_error([*TRAIN, "--data", f"imagefolder:{root}", "--out", tmp_path / "o"], "symlink loop")


def test_too_many_unreadable_images_refuse_training(tmp_path):
    root = _image_folder(tmp_path / "ds", per_class=20, bad=2)
    expect_error([*TRAIN, "--data", f"imagefolder:{root}", "--out", tmp_path / "o"], "cannot decode 2 of 40 train")


def test_one_unreadable_image_is_skipped_and_listed_in_the_run(tmp_path):
    root = _image_folder(tmp_path / "ds", per_class=60, bad=1)
    res = invoke([*TRAIN, "--data", f"imagefolder:{root}", "--out", tmp_path / "run"])
    assert res.exit_code == 0, res.output
    assert "skipped 1" in res.output
    assert (tmp_path / "run" / "skipped_images.txt").read_text().startswith(str(root / "train" / "c0" / "000.png"))


def test_strict_images_refuses_one_unreadable_image(tmp_path):
    root = _image_folder(tmp_path / "ds", per_class=60, bad=1)
    expect_error([*TRAIN, "--data", f"imagefolder:{root}", "--strict-images", "--out", tmp_path / "o"],
                 "--strict-images")


# ---- train: options and config ------------------------------------------------------------------


@pytest.mark.parametrize("extra, match", [
    (["--lr", "-1"], "lr must be > 0, got -1.0"),
    (["--lr", "nan"], "lr must be > 0"),
    (["--weight-decay", "-1"], "weight_decay must be >= 0"),
    (["--warmup-epochs", "-2"], "warmup_epochs must be >= 0"),
    (["--set", "momentum=1.5"], "momentum must be in [0, 1)"),
    (["--set", "dist_timeout=0"], "dist_timeout must be > 0"),
    (["--epochs", "0"], "epochs"),
    (["--model", "nope"], "unknown model 'nope'"),
    (["--method", "nope"], "nope"),
    (["--set", "nokey=1"], "unknown config key 'nokey'"),
    (["--set", "lr"], "--set expects key=value"),
    (["--set", "lr=[1,"], "--set lr: not a plain YAML value"),
])
def test_train_bad_options(tmp_path, extra, match):
    expect_error([*TRAIN, *extra, "--out", tmp_path / "o"], match)


def test_yaml_tag_in_set_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    expect_error([*TRAIN, "--set", f"lr=!!python/object/apply:os.system ['touch {marker}']", "--out", tmp_path / "o"],
                 "--set lr: not a plain YAML value")
    assert not marker.exists()


@pytest.mark.parametrize("text, match", [("epochs: [1,\n", "not valid YAML"), ("- 1\n", "mapping"),
                                         ("lr: !!python/object/apply:os.system ['true']\n", "YAML")])
def test_malformed_config_files(tmp_path, text, match):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    expect_error([*TRAIN, "--config", cfg, "--out", tmp_path / "o"], match)
    assert not (tmp_path / "o").exists()


def test_config_path_is_a_directory(tmp_path):
    expect_error([*TRAIN, "--config", tmp_path, "--out", tmp_path / "o"], str(tmp_path))


def test_out_is_a_file(tmp_path):
    (tmp_path / "f").write_text("keep")
    expect_error([*TRAIN, "--out", tmp_path / "f"], "cannot write to run directory")  # "it is not a directory"
    assert (tmp_path / "f").read_text() == "keep"


def test_refused_run_leaves_no_run_directory(tmp_path):
    expect_error(["train", "--data", SYN, "--model", "tiny", "--epochs", "1", "--batch-size", "4096", "--out",
                  tmp_path / "o"], "batch size")
    assert not (tmp_path / "o").exists()
    (tmp_path / "empty").mkdir()  # an existing empty --out stays as it was
    expect_error([*TRAIN, "--batch-size", "4096", "--out", tmp_path / "empty"], "batch size")
    assert list((tmp_path / "empty").iterdir()) == []


def test_refused_resume_keeps_the_stored_config(tmp_path, run_dir):
    """`--resume RUN` with a setting setup refuses must not overwrite RUN/config.yaml (the next resume reads it)."""
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    expect_error(["train", "--resume", d, "--epochs", "2", "--batch-size", "4096"], "batch size")
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_resume_of_a_missing_run(tmp_path):
    expect_error(["train", "--resume", tmp_path / "nope"], "cannot resume")


def test_teacher_that_is_not_a_model(tmp_path):
    (tmp_path / "t.pt").write_bytes(b"not a checkpoint")
    expect_error([*TRAIN, "--method", "kd", "--teacher", tmp_path / "t.pt", "--out", tmp_path / "o"],
                 "not a readable edgekd checkpoint")
    assert not (tmp_path / "o").exists()


# ---- train: faults while writing, leftovers, concurrency ----------------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 64 KiB file system (tmpfs): writes there fail with a true ENOSPC. Needs root (else skipped)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a 64 KiB tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "--lazy", str(mnt)], check=True)  # lazy: a failed writer may hold a descriptor


def test_really_full_disk_while_writing_a_checkpoint(tiny_disk):
    out = tiny_disk / "run"
    expect_error([*TRAIN, "--out", out], "No space left on device")
    assert not (out / "last.pt").exists() and hidden(out) == []


def test_disk_full_at_fsync_while_writing_a_checkpoint(tmp_path, no_space):
    out = tmp_path / "run"
    expect_error([*TRAIN, "--out", out], "No space left on device")
    assert not (out / "last.pt").exists() and hidden(out) == []


def test_stale_temp_of_a_killed_writer_is_removed_on_resume(tmp_path, run_dir):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    stale = run / f".last.pt.{dead_pid()}@{eio.host_tag()}.0123abcd.tmp"
    stale.write_bytes(b"half a checkpoint")
    live = run / f".last.pt.{os.getpid()}@{eio.host_tag()}.0123abce.tmp"  # ours: alive, must stay
    live.write_bytes(b"")
    res = invoke(["train", "--resume", run, "--epochs", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert not stale.exists() and live.exists()


def test_second_run_into_a_locked_directory_is_refused(tmp_path):
    out = tmp_path / "run"
    with run_lock(out):
        line = expect_error([*TRAIN, "--out", out], "in use by another run")
    assert f"pid {os.getpid()}" in line
    assert not (out / "config.yaml").exists()


def test_run_takes_over_the_lock_of_a_killed_run(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom edgekd.lock import run_lock\n"
                               "with run_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(120)",
                               str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        expect_error([*TRAIN, "--out", out], f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    res = invoke([*TRAIN, "--out", out])
    assert res.exit_code == 0 and "took over the lock" in res.output
    assert not (out / LOCK_FILE).exists()


# ---- the lock itself ---------------------------------------------------------------------------


def test_run_lock_names_the_holder_and_releases(tmp_path):
    with run_lock(tmp_path / "r") as me:
        assert lock_holder(tmp_path / "r") == me
        with pytest.raises(RunLockedError, match=rf"in use by another run: pid {os.getpid()} on .*, started "):
            with run_lock(tmp_path / "r"):
                pass
    assert not (tmp_path / "r").exists()  # created for the lock, empty at release: removed
    (tmp_path / "r").mkdir()
    with run_lock(tmp_path / "r"):  # free again
        (tmp_path / "r" / "best.pt").write_text("x")
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["best.pt"]


def test_run_lock_of_a_killed_process_is_taken_over_once(tmp_path):
    d = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom edgekd.lock import run_lock\n"
                               "with run_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(120)",
                               str(d)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
        with run_lock(d):
            pass
    holder.kill()
    holder.wait()
    assert lock_holder(d).pid == holder.pid  # the stale record is still there
    notes: list[str] = []
    with run_lock(d, log=notes.append) as me:
        assert me.pid == os.getpid() and lock_holder(d).pid == os.getpid()
        assert len(notes) == 1 and f"pid {holder.pid}" in notes[0]
        racers = [subprocess.run([sys.executable, "-c", "import sys\nfrom edgekd.lock import run_lock\n"
                                  "with run_lock(sys.argv[1]):\n    print('WON')", str(d)],
                                 capture_output=True, text=True) for _ in range(2)]
        assert all(r.returncode == 1 and "in use by another run" in r.stderr and "WON" not in r.stdout
                   for r in racers)


RACER = """
import os, sys, time
from edgekd.lock import run_lock, RunLockedError
go = sys.argv[2]
while not os.path.exists(go):
    time.sleep(0.005)
try:
    with run_lock(sys.argv[1]):
        print("WON", flush=True)
        time.sleep(3)
except RunLockedError as exc:
    print("LOST", exc)
"""


def test_racing_takeovers_of_a_stale_lock_have_one_winner(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    rec = {"pid": dead_pid(), "host": os.uname().nodename, "started": "2020-01-01T00:00:00+00:00"}
    (d / LOCK_FILE).write_text(json.dumps(rec))  # a killed run's lock: all racers see it stale
    go = tmp_path / "go"
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(d), str(go)], stdout=subprocess.PIPE, text=True)
              for _ in range(4)]
    go.write_text("")
    outs = [r.communicate(timeout=60)[0] for r in racers]
    assert sum(o.startswith("WON") for o in outs) == 1, outs
    assert sum(o.startswith("LOST") and "in use by another run" in o for o in outs) == 3, outs


def test_run_lock_respects_a_live_pid_even_without_a_kernel_lock(tmp_path, monkeypatch):
    import edgekd.lock as lock

    d = tmp_path / "r"
    d.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        rec = {"pid": sleeper.pid, "host": os.uname().nodename, "started": "2020-01-01T00:00:00+00:00"}
        (d / LOCK_FILE).write_text(json.dumps(rec))
        monkeypatch.setattr(lock, "_flock", lambda fd: None)  # a file system without flock
        with pytest.raises(RunLockedError, match=f"pid {sleeper.pid}.*delete"):
            with run_lock(d):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    with run_lock(d):  # dead now: taken over
        assert lock_holder(d).pid == os.getpid()


# ---- atomic writes ------------------------------------------------------------------------------


def test_atomic_write_disk_full_is_one_line_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(eio.WriteError, match=r"cannot write .*report.json: No space left on device \(disk full"):
        with eio.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "old" and hidden(tmp_path) == []
    err = pytest.raises(OSError, eio.write_json_atomic, tmp_path, {})  # a directory as the target
    assert isinstance(err.value, EdgekdError) and "Is a directory" in str(err.value)


def test_atomic_write_fsyncs_file_and_directory_and_keeps_umask(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync
    monkeypatch.setattr(eio.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    eio.write_text_atomic(tmp_path / "a.txt", "x")
    assert len(synced) == 2 and synced[0].endswith(".tmp") and synced[1] == str(tmp_path)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_remove_stale_keeps_live_and_foreign_leftovers(tmp_path):
    dead, host = dead_pid(), eio.host_tag()
    gone = [tmp_path / f".last.pt.{dead}@{host}.00ff.tmp", tmp_path / f".out.staging-{dead}-1a2b3c4d",
            tmp_path / f".out.staging-{dead}@{host}-1a2b3c4e"]
    kept = [tmp_path / f".last.pt.{os.getpid()}@{host}.00ff.tmp",  # alive
            tmp_path / f".last.pt.{dead}@someotherhost.00ff.tmp",  # another machine: cannot tell
            tmp_path / ".last.pt.abcdefgh.tmp", tmp_path / "keep.txt"]  # not ours / not a temp name
    for p in gone + kept:
        if "staging" in p.name:
            (p / "sub").mkdir(parents=True)
        else:
            p.write_text("x")
    assert sorted(eio.remove_stale(tmp_path)) == sorted(gone)
    assert all(p.exists() for p in kept)


# ---- info ---------------------------------------------------------------------------------------


def _forged(run_dir: Path, tmp_path: Path, **changes) -> Path:
    """best.pt with the edgekd marker but impossible fields."""
    import torch

    ck = torch.load(run_dir / "best.pt", weights_only=True)
    for k, v in changes.items():
        if k == "num_classes":
            ck["model_kwargs"] = dict(ck["model_kwargs"], num_classes=v)
        else:
            ck[k] = v
    path = tmp_path / "forged.pt"
    torch.save(ck, path)
    return path


@pytest.mark.parametrize("command, changes, match", [
    ("info", {"num_classes": -3}, "10 class names but num_classes -3"),
    ("export", {"num_classes": -3}, "10 class names but num_classes -3"),
    ("info", {"input_shape": [3, -1, 8]}, "'input_shape' must be three positive integers"),
    ("export", {"input_shape": [3, -1, 8]}, "'input_shape' must be three positive integers"),
    ("info", {"class_names": "abc"}, "'class_names' must be a non-empty list of strings"),
    ("export", {"class_names": "abc"}, "'class_names' must be a non-empty list of strings"),
    ("info", {"std": [0.2, 0.0, 0.2]}, "'std' must be positive"),
    ("info", {"mean": "abc"}, "'mean' must be a list of numbers"),
    ("info", {"format_version": "1"}, "'format_version' must be an integer"),
    ("info", {"model_name": "nope"}, "unknown model 'nope'"),
    ("export", {"model_name": "nope"}, "unknown model 'nope'"),
])
def test_checkpoint_with_marker_but_impossible_fields(tmp_path, run_dir, command, changes, match):
    ck = _forged(run_dir, tmp_path, **changes)
    args = ["info", ck] if command == "info" else ["export", ck, "--out", tmp_path / "o"]
    expect_error(args, match)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("what, match", [("missing", "checkpoint not found"), ("garbage", "not a readable"),
                                         ("empty_dir", "checkpoint not found")])
def test_info_bad_paths(tmp_path, what, match):
    p = tmp_path / what
    if what == "garbage":
        p.write_bytes(b"\x00garbage")
    elif what == "empty_dir":
        p.mkdir()
    expect_error(["info", p], match)


# ---- export -------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, match", [
    (["--opset", "3"], "--opset 3 is not supported"),
    (["--max-batch", "0"], "--max-batch"),
    (["--int8", "--calib-size", "-1"], "--calib-size must be > 0"),
    (["--int8", "--max-accuracy-drop", "-5"], "--max-accuracy-drop must be >= 0"),
    (["--format", "nope"], "nope"),
])
def test_export_bad_options_write_nothing(tmp_path, run_dir, extra, match):
    expect_error(["export", run_dir, "--out", tmp_path / "o", *extra], match)
    assert not (tmp_path / "o").exists() and hidden(tmp_path) == []


def test_export_disk_full_leaves_nothing(tmp_path, run_dir, no_space):
    expect_error(["export", run_dir, "--out", tmp_path / "o"], "No space left on device")
    assert not (tmp_path / "o").exists() and hidden(tmp_path) == []


def test_export_onto_a_really_full_disk(tiny_disk, run_dir):
    expect_error(["export", run_dir, "--out", tiny_disk / "o"], "No space left on device")
    assert list(tiny_disk.iterdir()) == []


def test_export_removes_the_staging_folder_of_a_killed_export(tmp_path, run_dir):
    stale = tmp_path / f".o.staging-{dead_pid()}-0123abcd"
    (stale / "half").mkdir(parents=True)
    res = invoke(["export", run_dir, "--out", tmp_path / "o"])
    assert res.exit_code == 0, res.output
    assert not stale.exists() and hidden(tmp_path) == []


# Runs `edgekd ARGS...` and kills itself (SIGKILL) right after export's first rename (OUT -> .OUT.old-*)
KILL_BETWEEN_RENAMES = """
import os, signal, sys
real = os.replace
def replace(src, dst, *a, **k):
    real(src, dst, *a, **k)
    if ".old-" in os.path.basename(str(dst)):
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
from edgekd.cli import app
app(args=sys.argv[1:], prog_name="edgekd")
"""


def test_export_killed_between_its_renames_is_undone_by_the_next(tmp_path, run_dir, exported):
    """kill -9 after the earlier export was swapped out and before the new one moved in: the next export
    (even one that then fails) puts the earlier export back; a later success replaces it as usual."""
    out = tmp_path / "o"
    shutil.copytree(exported, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, "export", str(run_dir), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert not out.exists() and any(n.startswith(".o.old-") for n in hidden(tmp_path))
    expect_error(["export", run_dir, "--out", out, "--data", "synthetic:n_train=40,n_test=20,size=16"],
                 "the checkpoint expects")  # fails after the cleanup, before anything is written
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and hidden(tmp_path) == []
    res = invoke(["export", run_dir, "--out", out])
    assert res.exit_code == 0, res.output
    assert (out / "manifest.json").is_file() and hidden(tmp_path) == []


def test_export_killed_after_its_renames_leaves_the_new_export(tmp_path, run_dir, exported):
    """Killed after the second rename: OUT is the new export; the next export deletes the earlier one.
    An earlier export of a live process (one publishing right now) is left alone."""
    out = tmp_path / "o"
    shutil.copytree(exported, out)
    dead, live = tmp_path / f".o.old-{dead_pid()}@{eio.host_tag()}", tmp_path / f".o.old-{os.getpid()}"
    shutil.copytree(exported, dead)
    shutil.copytree(exported, live)
    expect_error(["export", run_dir, "--out", out, "--data", "synthetic:n_train=40,n_test=20,size=16"],
                 "the checkpoint expects")
    assert not dead.exists() and live.exists() and (out / "manifest.json").is_file()


# ---- bench --------------------------------------------------------------------------------------


def test_bench_data_with_an_unreadable_image_warns_in_one_line(tmp_path, exported):
    root = _image_folder(tmp_path / "ds", per_class=60, bad=1)
    res = invoke(["bench", exported / "model.onnx", "--data", f"imagefolder:{root}", *FAST_BENCH])
    assert res.exit_code == 0, res.output
    warnings = [ln for ln in res.output.splitlines() if ln.startswith("warning: skipped")]
    assert len(warnings) == 1 and "skipped 1 unreadable image(s)" in warnings[0] and "000.png" in warnings[0]


def test_bench_json_pointing_at_a_directory(tmp_path, exported):
    expect_error(["bench", exported / "model.onnx", "--json", tmp_path, *FAST_BENCH], "Is a directory")
    assert hidden(tmp_path) == []


def test_bench_json_on_a_full_disk(tmp_path, exported, no_space):
    expect_error(["bench", exported / "model.onnx", "--json", tmp_path / "r.json", *FAST_BENCH],
                 "No space left on device")
    assert not (tmp_path / "r.json").exists() and hidden(tmp_path) == []


@pytest.mark.parametrize("report, match", [
    ("[1,2", "not a JSON bench report"),
    ("[]", "not an edgekd bench report"),
    (json.dumps({"models": [{"name": "x"}]}), "not an edgekd bench report"),
    (json.dumps({"schema": "edgekd-bench-report", "schema_version": 1, "models": [{"name": "x"}]}), "baseline"),
])
def test_bench_bad_baseline(tmp_path, exported, report, match):
    base = tmp_path / "base.json"
    base.write_text(report)
    expect_error(["bench", exported / "model.onnx", "--baseline", base, *FAST_BENCH], match)


@pytest.mark.parametrize("extra, match", [
    (["--batch-sizes", "0"], "--batch-sizes must be positive"),
    (["--batch-sizes", "abc"], "--batch-sizes must be comma-separated integers"),
    (["--max-latency-regression", "abc"], "not a percentage"),
    (["--threads", "0"], "--threads must be at least 1"),
])
def test_bench_bad_options(exported, extra, match):
    expect_error(["bench", exported / "model.onnx", *extra], match)


@pytest.mark.parametrize("extra, match", [
    (["--processes", "2"], "at least 3 processes"),
    (["--rounds", "0"], "at least 5 rounds"),
    (["--confidence", "2"], "--confidence must lie between"),
    (["--max-latency-regression", "abc"], "not a percentage"),
    (["--batch-sizes", "0"], "--batch-sizes must be positive"),
])
def test_bench_compare_bad_options_measure_nothing(tmp_path, exported, extra, match):
    m = exported / "model.onnx"
    expect_error(["bench", "compare", m, m, *extra, "--json", tmp_path / "c.json"], match)
    assert list(tmp_path.iterdir()) == []


def test_bench_compare_missing_model(tmp_path, exported):
    expect_error(["bench", "compare", exported / "model.onnx", tmp_path / "nope.onnx"], "model not found")


@pytest.mark.parametrize("what, match", [("missing.onnx", "model not found"), ("garbage.onnx", "not a loadable")])
def test_bench_bad_models(tmp_path, what, match):
    if what.startswith("garbage"):
        (tmp_path / what).write_bytes(b"xx")
    expect_error(["bench", tmp_path / what, *FAST_BENCH], match)


# ---- demo ---------------------------------------------------------------------------------------


def test_demo_out_is_a_file(tmp_path):
    (tmp_path / "f").write_text("keep")
    expect_error(["demo", "--quick", "--out", tmp_path / "f"], "exists and is not a directory")
    assert (tmp_path / "f").read_text() == "keep"


def test_demo_never_deletes_a_users_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "train").mkdir()  # looks like an earlier demo, but notes.txt is not the demo's
    expect_error(["demo", "--quick", "--out", tmp_path], "holds files the demo did not write (notes.txt)")
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "train").is_dir()


# ---- edgekd-run ---------------------------------------------------------------------------------


def test_runtime_16bit_png_gets_the_probabilities_of_its_8bit_twin(tmp_path, exported, capsys):
    g = np.random.default_rng(3).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(g).save(tmp_path / "a8.png")
    png16(tmp_path / "a16.png", g.astype(np.uint16) * 257)
    code, out, _ = run_tool([exported / "model.onnx", tmp_path / "a8.png", tmp_path / "a16.png", "--json"], capsys)
    assert code == 0
    r = json.loads(out)["results"]
    assert r[0]["top_k"] == r[1]["top_k"]


def test_runtime_reports_a_symlink_loop_and_classifies_the_rest(tmp_path, exported, capsys):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "ok.png")
    os.symlink(d / "loop.png", d / "loop.png")
    code, out, err = run_tool([exported / "model.onnx", d], capsys)
    assert code == 1
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        f"error: {d / 'loop.png'}: cannot decode image (Too many levels of symbolic links)"]
    assert out.startswith(str(d / "ok.png"))


def test_runtime_corrupt_image_is_one_line(tmp_path, exported, capsys):
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    code, _, err = run_tool([exported / "model.onnx", tmp_path / "x.png"], capsys)
    assert code == 1 and err.count("error:") == 1 and "x.png" in err


def test_runtime_manifest_of_another_model_is_refused(tmp_path, exported, capsys):
    d = tmp_path / "m"
    shutil.copytree(exported, d)
    manifest = json.loads((d / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"model.onnx"}
    manifest["files"]["model.onnx"] = "0" * 64  # as if model.onnx were another export's
    (d / "manifest.json").write_text(json.dumps(manifest))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    code, out, err = run_tool([d / "model.onnx", tmp_path / "x.png"], capsys)
    assert code == 1 and out == "" and err.count("error:") == 1 and "sha256" in err


def test_runtime_model_replaced_beside_its_manifest_is_refused(tmp_path, exported, capsys):
    """model.onnx swapped for another file (here: the same graph with other bytes) under the same manifest.json."""
    import onnx

    d = tmp_path / "m"
    shutil.copytree(exported, d)
    proto = onnx.load(str(d / "model.onnx"))
    proto.doc_string = "another build"
    onnx.save(proto, str(d / "model.onnx"))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    code, out, err = run_tool([d / "model.onnx", tmp_path / "x.png"], capsys)
    assert code == 1 and out == "" and err.count("error:") == 1 and "belongs to another export" in err
    code, out, _ = run_tool([exported / "model.onnx", tmp_path / "x.png"], capsys)  # the untouched export runs
    assert code == 0 and out.startswith(str(tmp_path / "x.png"))


def test_runtime_missing_model_is_one_line(tmp_path, capsys):
    code, out, err = run_tool([tmp_path / "none.onnx", tmp_path / "x.png"], capsys)
    assert code == 1 and out == "" and err.count("error:") == 1


# ---- as processes: the real terminal contract -----------------------------------------------------


def test_process_level_one_line_for_a_crafted_pickle(tmp_path):
    marker = tmp_path / "PWNED"
    root = cifar_folder(tmp_path / "cifar", raw=pickle.dumps(Exploit(f"touch {marker}")))
    proc = subprocess.run([sys.executable, "-m", "edgekd", "train", "--data", f"cifar:{root}", "--model", "tiny",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "refuses to load" in proc.stderr
    assert not marker.exists() and not (tmp_path / "o").exists()
