"""Subprocesses through asyncio.create_subprocess_* and the loop's subprocess_exec/shell, with
real children. Each test runs on the stdlib loop and on oxio."""

import asyncio
import gc
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import pytest

PY = sys.executable
PIPE = asyncio.subprocess.PIPE


@pytest.fixture(autouse=True)
def no_policy_child_watcher():
    """asyncio's loop installs a ThreadedChildWatcher on the policy the first time it spawns a
    child (3.11 to 3.13), and oxio honours a watcher found there. Each test ends by removing
    it, so that oxio's own pidfd watching is what the oxio runs exercise."""
    yield
    policy = asyncio.get_event_loop_policy()
    watcher = getattr(policy, "_watcher", None)
    if watcher is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            policy.set_child_watcher(None)
        watcher.close()


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def test_echo_through_stdin_and_stdout(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)
        out, err = await proc.communicate(b"hello child\n")
        assert (out, err, proc.returncode) == (b"hello child\n", None, 0)

    run(main())


def test_large_output_both_directions(loop, run):
    payload = os.urandom(1 << 20) * 8  # 8 MiB through cat and back

    async def main():
        proc = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)
        out, _ = await proc.communicate(payload)
        assert out == payload
        assert proc.returncode == 0

    run(main())


def test_stderr_and_stdout_redirection(loop, run):
    async def main():
        code = "import sys; sys.stdout.write('out'); sys.stdout.flush(); sys.stderr.write('err')"
        proc = await asyncio.create_subprocess_exec(PY, "-c", code, stdout=PIPE, stderr=PIPE)
        assert await proc.communicate() == (b"out", b"err")
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", code, stdout=PIPE, stderr=subprocess.STDOUT
        )
        out, err = await proc.communicate()
        assert sorted([out[:3], out[3:]]) == [b"err", b"out"] and err is None
        proc = await asyncio.create_subprocess_exec(
            "cat", stdin=subprocess.DEVNULL, stdout=PIPE, stderr=subprocess.DEVNULL
        )
        assert await proc.communicate() == (b"", None)

    run(main())


def test_exit_codes_and_signals(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_shell("exit 7")
        assert await proc.wait() == 7
        proc = await asyncio.create_subprocess_exec("sleep", "30")
        proc.kill()
        assert await proc.wait() == -signal.SIGKILL
        proc = await asyncio.create_subprocess_exec("sleep", "30")
        proc.terminate()
        assert await proc.wait() == -signal.SIGTERM
        proc = await asyncio.create_subprocess_exec("sleep", "30")
        proc.send_signal(signal.SIGINT)
        assert await proc.wait() == -signal.SIGINT
        assert proc.returncode == -signal.SIGINT
        with pytest.raises(ProcessLookupError):
            proc.kill()  # the process is gone

    run(main())


def test_communicate_with_timeout_then_kill(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_exec("sleep", "30", stdout=PIPE)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(proc.communicate(), 0.1)
        proc.kill()
        await proc.communicate()
        assert proc.returncode == -signal.SIGKILL

    run(main())


def test_environment_cwd_and_pass_fds(loop, run, tmp_path):
    async def main():
        rfd, wfd = os.pipe()
        code = (
            "import os, sys; os.write(int(sys.argv[1]), b'via fd');"
            "print(os.environ['OXIO_TEST'], os.getcwd())"
        )
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-c",
            code,
            str(wfd),
            stdout=PIPE,
            env={**os.environ, "OXIO_TEST": "env-value"},
            cwd=tmp_path,
            pass_fds=(wfd,),
        )
        out, _ = await proc.communicate()
        os.close(wfd)
        assert out.decode().split() == ["env-value", str(tmp_path)]
        assert os.read(rfd, 100) == b"via fd"
        os.close(rfd)

    run(main())


def test_missing_executable(loop, run):
    async def main():
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec("/nonexistent/oxio-no-such-program")

    before = fd_count()
    run(main())
    assert fd_count() == before


def test_argument_errors(loop, run):
    async def main():
        with pytest.raises(ValueError):
            await loop.subprocess_shell(asyncio.SubprocessProtocol, ["echo", "list"])
        with pytest.raises(ValueError):
            await loop.subprocess_exec(asyncio.SubprocessProtocol, "true", text=True)
        with pytest.raises(ValueError):
            await loop.subprocess_exec(asyncio.SubprocessProtocol, "true", bufsize=1)
        with pytest.raises(ValueError):
            await loop.subprocess_shell(asyncio.SubprocessProtocol, "true", universal_newlines=True)
        with pytest.raises(ValueError):
            await loop.subprocess_exec(asyncio.SubprocessProtocol, "true", encoding="utf-8")

    run(main())


def test_protocol_callbacks_and_their_order(loop, run):
    class Recorder(asyncio.SubprocessProtocol):
        def __init__(self):
            self.events = []
            self.stdout = bytearray()
            self.done = loop.create_future()

        def connection_made(self, transport):
            self.events.append("made")

        def pipe_data_received(self, fd, data):
            self.stdout += data
            if self.events[-1] != ("data", fd):
                self.events.append(("data", fd))

        def pipe_connection_lost(self, fd, exc):
            self.events.append(("pipe lost", fd))

        def process_exited(self):
            self.events.append(("exited", len(self.stdout)))

        def connection_lost(self, exc):
            self.events.append("lost")
            self.done.set_result(None)

    async def main():
        transport, protocol = await loop.subprocess_exec(
            Recorder, PY, "-c", "import sys; sys.stdout.write('x' * 300_000)", stdin=None
        )
        assert transport.get_pid() > 0
        assert transport.get_pipe_transport(0) is None
        assert transport.get_pipe_transport(1) is not None
        await protocol.done
        assert transport.get_returncode() == 0
        assert protocol.events[0] == "made"
        assert protocol.events[-1] == "lost"
        # Every byte of output was delivered before process_exited.
        assert ("exited", 300_000) in protocol.events
        assert ("pipe lost", 1) in protocol.events and ("pipe lost", 2) in protocol.events
        transport.close()
        assert transport.is_closing()

    run(main())


def test_reader_that_pauses_stops_the_pipe(loop, run):
    """Flow control: a paused reader does not buffer the child's whole output."""

    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; sys.stdout.buffer.write(b'y' * (64 << 20))", stdout=PIPE
        )
        await asyncio.sleep(0.3)  # nobody reads: StreamReader pauses the pipe transport
        buffered = len(proc.stdout._buffer)
        assert buffered <= 4 * 64 * 1024 + 256 * 1024, buffered
        total = 0
        while chunk := await proc.stdout.read(1 << 20):
            total += len(chunk)
        assert total == 64 << 20
        assert await proc.wait() == 0

    run(main())


def test_grandchild_holding_the_pipe(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_shell("sleep 0.3 & echo started", stdout=PIPE)
        assert await proc.stdout.readline() == b"started\n"
        assert await proc.wait() == 0
        # The shell is gone; its child holds stdout open until it exits.
        assert await proc.stdout.read() == b""

    run(main())


def test_process_exits_with_stdin_still_open(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_exec("true", stdin=PIPE)
        assert await proc.wait() == 0
        proc.stdin.write(b"too late")
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(10):
                await proc.stdin.drain()
                proc.stdin.write(b"x" * 65536)
                await asyncio.sleep(0.01)

    run(main())


def test_many_processes_in_a_row_leave_fds_flat(loop, run):
    async def main():
        for _ in range(10):  # warm-up: executor threads, caches
            proc = await asyncio.create_subprocess_exec("true", stdout=PIPE)
            await proc.communicate()
        before = fd_count()
        for _ in range(500):
            proc = await asyncio.create_subprocess_exec("true", stdout=PIPE)
            await proc.communicate()
            assert proc.returncode == 0
        assert fd_count() == before

    run(main())


def test_fifty_processes_at_once(loop, run):
    async def one(i):
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", f"import time; time.sleep(0.2); print({i})", stdout=PIPE
        )
        out, _ = await proc.communicate()
        return int(out), proc.returncode

    async def main():
        results = await asyncio.gather(*(one(i) for i in range(50)))
        assert results == [(i, 0) for i in range(50)]

    run(main())


def test_loop_closed_with_a_child_still_running(loop_factory):
    """No zombie and no fd left behind, as on the stdlib loop."""
    fds_before = fd_count()
    loop = loop_factory()

    async def start():
        return await asyncio.create_subprocess_exec("sleep", "0.3")

    proc = loop.run_until_complete(start())
    pid = proc.pid
    proc._transport.close()  # kills the child, as asyncio's transport does on close
    loop.close()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.exists(f"/proc/{pid}"), "child left as a zombie"
    with warnings.catch_warnings():
        # Nobody told the Popen object that its child was reaped; both loops leave it so.
        warnings.simplefilter("ignore", ResourceWarning)
        del proc
        gc.collect()
    assert fd_count() == fds_before


def test_popen_keywords_are_forwarded(loop, run):
    async def main():
        code = "import os; print(os.getsid(0) == os.getpid(), oct(os.umask(0)))"
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", code, stdout=PIPE, start_new_session=True, umask=0o027
        )
        out, _ = await proc.communicate()
        assert out.split() == [b"True", b"0o27"]
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import os; print(os.getpgid(0) == os.getpid())", stdout=PIPE, process_group=0
        )
        assert (await proc.communicate())[0] == b"True\n"

    run(main())


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="child watchers are deprecated from 3.12")
def test_a_child_watcher_installed_on_the_policy_is_used(loop, run):
    """On 3.11, asyncio.get_child_watcher() keeps working, and the loop honours the watcher."""

    class CountingWatcher(asyncio.ThreadedChildWatcher):
        added = 0

        def add_child_handler(self, pid, callback, *args):
            CountingWatcher.added += 1
            super().add_child_handler(pid, callback, *args)

    watcher = CountingWatcher()
    asyncio.set_child_watcher(watcher)
    try:
        assert asyncio.get_child_watcher() is watcher

        async def main():
            proc = await asyncio.create_subprocess_exec("true")
            return await proc.wait()

        assert run(main()) == 0
        assert CountingWatcher.added == 1
    finally:
        asyncio.set_child_watcher(None)
        watcher.close()


@pytest.mark.parametrize("loop_name", ["oxio"], indirect=True)
def test_oxio_watches_children_through_pidfds(loop, run):
    """No thread per child and no SIGCHLD handler: the exit arrives as a readable pidfd."""
    from oxio._subprocess import PidfdWatcher

    async def main():
        threads = threading.active_count()
        procs = [await asyncio.create_subprocess_exec("sleep", "0.2") for _ in range(5)]
        assert threading.active_count() == threads
        assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
        assert [await proc.wait() for proc in procs] == [0] * 5

    run(main())
    assert isinstance(loop._child_watcher, PidfdWatcher)
