"""The native userfaultfd benchmark, run for real on this machine.

Skipped as a whole only when the C extension is not built or this process may not open a
userfaultfd; the skip message says why and how to fix it.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from simpostcopy import native

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
HUGE = 2 * MIB
NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")
STAGES = ["delivery_s", "place_s", "wake_s", "round_trip_s"]
EPS = 1e-12  # stamps are whole nanoseconds; this absorbs float rounding of their differences

if not native.available():
    pytest.skip(native.unavailable_reason(), allow_module_level=True)
try:
    native.probe_uffd()
except (native.UffdPermissionError, native.UffdUnsupportedError) as exc:
    pytest.skip(str(exc), allow_module_level=True)


def measured(df):
    return df[~df["warmup"]]


def usage() -> tuple[int, int, int]:
    """Open fds, threads and mappings of this process."""
    maps = Path("/proc/self/maps").read_text().count("\n")
    return len(os.listdir("/proc/self/fd")), len(os.listdir("/proc/self/task")), maps


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- stages per handler mode and placement ------------------------------------------------------
@pytest.mark.parametrize("affinity", ["scheduler", "different", "same"])
@pytest.mark.parametrize("mode", ["read", "poll", "busy"])
def test_stages_are_positive_and_add_up(mode, affinity):
    # A spinning handler sharing the faulter's core can wait a scheduler tick per fault on
    # a small machine: measured too, with few samples.
    samples = 50 if (mode, affinity) == ("busy", "same") else 400
    df = native.run_faults(samples=samples, mode=mode, affinity=affinity, warmup=8)
    m = measured(df)
    assert len(m) == samples and df["warmup"].sum() == 8
    assert df["page"].tolist() == list(range(samples + 8))
    assert (m[STAGES] > 0).all().all()
    assert (df["round_trip_s"] + EPS >= df["delivery_s"] + df["place_s"]).all()
    assert (df["round_trip_s"] + EPS >= df["delivery_s"] + df["place_s"] + df["wake_s"]).all()
    # One thread per page: every message is the one placing its page.
    assert df["message"].all() and df["placed"].all() and not df["eexist"].any()
    assert df[["request_s", "network_s"]].isna().all().all()
    assert df.attrs["messages"] == samples + 8 and df.attrs["eexist"] == 0
    assert df.attrs["faults_per_s"] == pytest.approx(samples / df.attrs["wall_s"])
    assert df.attrs["wall_s"] < m["round_trip_s"].sum() + 1.0
    row = df.iloc[0]
    assert (row["mode"], row["affinity"], row["page_bytes"], row["threads"]) == (
        mode,
        affinity,
        4096,
        1,
    )
    assert not row["zeropage"] and row["handler_source"] == "syscall"  # root: the syscall works
    assert df.attrs["uffd_features"] >> 8 & 1  # UFFD_FEATURE_THREAD_ID


def test_zeropage_and_several_threads():
    df = native.run_faults(samples=300, threads=2, zeropage=True, affinity="different")
    m = measured(df)
    assert len(m) == 300 and (m[STAGES] > 0).all().all()
    assert (df["thread"] == df["page"] % 2).all()  # page i is touched by thread i % threads
    assert df["zeropage"].all() and (df["threads"] == 2).all()


def test_huge_pages_cost_more_to_place_than_small_ones():
    small = native.run_faults(samples=200, affinity="different")
    before = NR_HUGEPAGES.read_text()
    try:
        with native.reserve_hugepages(40 + 16):
            huge = native.run_faults(page_bytes=HUGE, samples=40, affinity="different")
    except native.HugePagesUnavailableError:
        # This host cannot provide them: the benchmark must refuse the same way, never
        # fall back to small pages.
        with pytest.raises(native.HugePagesUnavailableError):
            native.run_faults(page_bytes=HUGE, samples=40)
        return
    assert NR_HUGEPAGES.read_text() == before  # the pool is restored
    m = measured(huge)
    assert len(m) == 40 and (m[STAGES] > 0).all().all()
    assert m["place_s"].median() > measured(small)["place_s"].median()


@pytest.mark.skipif(os.geteuid() != 0, reason="emptying the huge page pool needs root")
def test_no_free_huge_pages_raises_with_the_remedy():
    before = NR_HUGEPAGES.read_text()
    try:
        NR_HUGEPAGES.write_text("0")
        with pytest.raises(native.HugePagesUnavailableError) as info:
            native.run_faults(page_bytes=HUGE, samples=4, warmup=2)
    finally:
        NR_HUGEPAGES.write_text(before)
    assert info.value.needed == 6
    assert "echo 6 > /proc/sys/vm/nr_hugepages" in str(info.value)


def test_reserve_hugepages_adds_the_shortfall_and_restores():
    before = NR_HUGEPAGES.read_text()
    free = int(Path(native.HUGEPAGES_DIR, "free_hugepages").read_text())
    try:
        with native.reserve_hugepages(free + 3) as added:
            assert added == 3
            assert int(Path(native.HUGEPAGES_DIR, "free_hugepages").read_text()) >= free + 3
    except native.HugePagesUnavailableError as exc:
        assert "nr_hugepages" in str(exc)
    assert NR_HUGEPAGES.read_text() == before


# -- races: several threads on one page ---------------------------------------------------------
def test_shared_pages_are_placed_once_and_wake_every_waiter():
    threads, samples = 4, 300
    df = native.run_faults(samples=samples, threads=threads, shared_pages=True, warmup=8)
    assert len(df) == (samples + 8) * threads  # one row per (thread, page) touch
    per_page = df.groupby("page")
    assert (per_page["thread"].nunique() == threads).all()
    assert (per_page["placed"].sum() == 1).all()  # exactly one placing message per page
    placing = df[df["placed"]]
    assert placing["message"].all() and not placing["eexist"].any()
    # A message read for a page already placed is a duplicate, recorded as EEXIST.
    dup = df[df["message"] & ~df["placed"]]
    assert dup["eexist"].all() and len(dup) > 0
    assert df.attrs["eexist"] == len(dup) and df.attrs["messages"] == len(placing) + len(dup)
    # Every touch resumes after its page's placement began; a thread that faulted (its
    # message was read) only once UFFDIO_WAKE followed the placement.
    assert (df["wake_s"] + df["place_s"] > 0).all()
    assert (df.loc[df["message"], "wake_s"] > 0).all()
    assert df["delivery_s"].isna().eq(~df["message"]).all()


# -- harness and placement series ---------------------------------------------------------------
def test_harness_overhead_is_below_a_microsecond():
    overhead = native.harness_overhead(10000)
    assert overhead.shape == (10000,) and (overhead >= 0).all()
    assert np.median(overhead) < 1e-6


def test_place_series_fit_gives_positive_costs():
    df = native.place_series(reps=10)
    assert sorted(set(df["batch_pages"])) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert len(df) == 90 and (df["bytes"] == df["batch_pages"] * 4096).all()
    assert (df["duration_s"] > 0).all()
    fixed, per_byte = native.fit_placement(df)
    assert 0 < fixed < 1e-3 and 0 < per_byte < 1e-7


# -- network hop ----------------------------------------------------------------------------
def test_network_hop_against_a_loopback_page_server():
    with native.PageServer(page_bytes=4096) as server:
        df = native.run_faults(samples=300, server=server.address, affinity="different")
    m = measured(df)
    assert len(m) == 300
    assert (m["request_s"] > 0).all() and (m["network_s"] > 0).all()
    assert (m["network_s"] >= m["request_s"]).all()
    assert (df["round_trip_s"] + EPS >= df["delivery_s"] + df["network_s"] + df["place_s"]).all()


def test_page_server_stopped_mid_run_raises_without_hanging():
    before = usage()
    server = native.PageServer()
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            native.run_faults(samples=50_000, server=server.address, timeout_s=5.0)
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    time.sleep(0.3)  # a few thousand pages into a run of a second or more
    stopped = time.monotonic()
    server.stop()
    runner.join(10)
    assert not runner.is_alive(), "the run hung after its page server stopped"
    assert time.monotonic() - stopped < 5.0
    assert isinstance(outcome.get("error"), native.PageServerError), outcome
    assert re.search(r"closed the connection after [1-9]\d* pages", str(outcome["error"]))
    # Joined threads leave /proc/self/task a moment after join() returns.
    deadline = time.monotonic() + 2.0
    while usage()[:2] != before[:2] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert usage()[:2] == before[:2]


def test_page_server_that_never_answers_times_out():
    with socket.create_server(("127.0.0.1", 0)) as silent:
        start = time.monotonic()
        with pytest.raises(native.PageServerError, match="timed out"):
            native.run_faults(samples=10, server=silent.getsockname()[:2], timeout_s=0.5)
        assert time.monotonic() - start < 5.0


def test_closed_port_raises_page_server_error():
    with pytest.raises(native.PageServerError, match="refused"):
        native.run_faults(samples=10, server=("127.0.0.1", closed_port()), timeout_s=2.0)


# -- permissions and kernel support -------------------------------------------------------------
NOBODY_CODE = """
from simpostcopy import native
try:
    native.run_faults(samples=10)
    print("OPENED")
except native.UffdPermissionError as exc:
    print("EPERM", exc)
"""


def _as_nobody_subprocess() -> str | None:
    """The benchmark's outcome in `python -c` run as nobody; None if nobody cannot run it."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": "/"}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", NOBODY_CODE],
            user="nobody",
            cwd="/",
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except PermissionError:  # e.g. the interpreter lives under root's 0700 home
        return None
    return proc.stdout if proc.returncode == 0 else None


def _as_nobody_fork() -> str:
    """The same in a forked child that drops to nobody: the interpreter and the package are
    already loaded, so nothing has to be readable by nobody."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report through the pipe, never return into pytest
        try:
            os.close(read_end)
            import pandas  # noqa: F401  (run_faults needs it; nobody may not read it later)

            user = pwd.getpwnam("nobody")
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            try:
                native.run_faults(samples=10)
                out = "OPENED"
            except native.UffdPermissionError as exc:
                out = f"EPERM {exc}"
        except BaseException as exc:
            out = f"FAILED {type(exc).__name__}: {exc}"
        os.write(write_end, out.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        out = pipe.read().decode()
    os.waitpid(pid, 0)
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to user nobody needs root")
def test_permission_error_for_real_as_nobody():
    out = _as_nobody_subprocess() or _as_nobody_fork()
    if out.startswith("OPENED"):
        pytest.skip("this host lets unprivileged users open a userfaultfd")
    assert out.startswith("EPERM"), out
    assert "sysctl vm.unprivileged_userfaultfd=1" in out
    assert "/dev/userfaultfd" in out and "CAP_SYS_PTRACE" in out


def test_open_error_mapping():
    unsupported = native.uffd_open_error(errno.ENOSYS, errno.ENOENT)
    assert isinstance(unsupported, native.UffdUnsupportedError)
    assert "CONFIG_USERFAULTFD" in str(unsupported) and "ENOSYS" in str(unsupported)
    denied = native.uffd_open_error(errno.EPERM, errno.EACCES)
    assert isinstance(denied, native.UffdPermissionError)
    assert "EPERM" in str(denied) and "EACCES" in str(denied)
    other = native.uffd_open_error(errno.EMFILE, errno.EMFILE)
    assert type(other) is native.NativeError and "EMFILE" in str(other)
    for cls in (native.UffdPermissionError, native.PageServerError, native.NativeUnavailableError):
        assert issubclass(cls, native.NativeError) and issubclass(cls, RuntimeError)


def test_bad_arguments_name_the_argument_value_and_choices():
    with pytest.raises(ValueError, match=r"mode='fast'.*'read', 'poll', 'busy'"):
        native.run_faults(mode="fast")
    with pytest.raises(ValueError, match=r"affinity='near'.*'scheduler', 'same', 'different'"):
        native.run_faults(affinity="near")
    with pytest.raises(ValueError, match=r"page_bytes=8192.*4096, 2097152"):
        native.run_faults(page_bytes=8192)
    with pytest.raises(ValueError, match="zeropage"):
        native.run_faults(page_bytes=HUGE, zeropage=True)
    with pytest.raises(ValueError, match="samples=0"):
        native.run_faults(samples=0)


# -- resources and host ---------------------------------------------------------------------
LEAK_CHECK = """
import json, os
from pathlib import Path
from simpostcopy import native

def usage():
    maps = Path("/proc/self/maps").read_text().count("\\n")
    return len(os.listdir("/proc/self/fd")), len(os.listdir("/proc/self/task")), maps

def runs(count):
    for i in range(count):
        mode = ("read", "poll", "busy")[i % 3]
        native.run_faults(samples=20, threads=2, warmup=2, mode=mode)
        if i % 10 == 0:  # a failure after the userfaultfd is open cleans up too
            try:
                native.run_faults(page_bytes=HUGE_BYTES, samples=100_000)
            except native.HugePagesUnavailableError:
                pass
            else:
                raise SystemExit("huge pages were available")

runs(3)  # thread stacks and allocator arenas settle in the first runs
before = usage()
runs(100)
print(json.dumps([before, usage()]))
"""


def test_hundred_runs_leak_nothing():
    # In a process of its own: threads other tests leave behind (thread pools, progress
    # bars) come and go on their own schedule and would blur the counts.
    out = subprocess.run(
        [sys.executable, "-c", LEAK_CHECK.replace("HUGE_BYTES", str(HUGE))],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    (fds, tasks, maps), after = json.loads(out)
    # Mappings may shrink (the allocator returning memory); no growth.
    assert after[:2] == [fds, tasks] and after[2] <= maps


def test_host_metadata_describes_the_machine():
    meta = native.host_metadata()
    assert meta["kernel"]["release"] == os.uname().release
    assert meta["online_cpus"] >= 1 and meta["cpu_model"]
    assert meta["page_sizes"][0] == {"page_bytes": 4096}
    assert meta["uffd"]["opened_with"] == "syscall"
    assert "THREAD_ID" in meta["uffd"]["features"]
    assert meta["unprivileged_userfaultfd"] in (0, 1, 2)
    assert isinstance(meta["virtual_machine"], bool) and meta["hostname"]
