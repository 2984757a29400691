"""oxio's `Popen` (`oxio._spawn`) against `subprocess.Popen`: each test runs on both classes and
expects the same children, outputs and errors. oxio's subprocess transport starts every child
through it, so what holds here holds for `loop.subprocess_exec` and `subprocess_shell`."""

import asyncio
import os
import pathlib
import signal
import subprocess
import sys

import pytest

import oxio
from oxio import _spawn

PY = sys.executable
PIPE = subprocess.PIPE


@pytest.fixture(params=["subprocess", "oxio"])
def Popen(request):
    return subprocess.Popen if request.param == "subprocess" else _spawn.Popen


@pytest.fixture(autouse=True)
def no_fd_left_open():
    before = set(os.listdir("/proc/self/fd"))
    yield
    leaked = set(os.listdir("/proc/self/fd")) - before
    assert not leaked, f"file descriptors left open: {sorted(leaked)}"


def run(Popen, args, **kwargs):
    """Runs a child to completion and returns (returncode, stdout, stderr)."""
    with Popen(args, stdout=PIPE, stderr=PIPE, **kwargs) as proc:
        out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


def children():
    """The pids of this process's children (zombies included)."""
    pids = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as listing:
            pids.update(listing.read().split())
    return pids


def raised(Popen, args, **kwargs):
    """The exception starting `args` raises, as (type, errno, strerror, filename). A child that
    did not start must also be gone, not left a zombie."""
    before = children()
    with pytest.raises(Exception) as info:
        Popen(args, **kwargs)
    assert children() <= before
    exc = info.value
    return (
        type(exc),
        getattr(exc, "errno", None),
        getattr(exc, "strerror", str(exc)),
        getattr(exc, "filename", None),
    )


def write_program(path, text, mode):
    path.write_text(text)
    path.chmod(mode)


def test_the_native_path_is_oxios():
    assert _spawn.Popen is not subprocess.Popen, "this Python's Popen._execute_child changed"
    assert issubclass(_spawn.Popen, subprocess.Popen)


def test_exit_codes_and_output(Popen):
    assert run(Popen, ["sh", "-c", "echo out; echo err >&2; exit 3"]) == (3, b"out\n", b"err\n")
    assert run(Popen, "echo $0", shell=True) == (0, b"/bin/sh\n", b"")
    with_executable = (["echo shell: $0"],)
    assert run(Popen, *with_executable, shell=True, executable="/bin/bash") == run(
        subprocess.Popen, *with_executable, shell=True, executable="/bin/bash"
    )
    assert run(Popen, ["ignored-argv0", "-c", "echo hi"], executable="sh")[1] == b"hi\n"
    assert run(Popen, b"true") == (0, b"", b"")
    assert run(Popen, pathlib.Path("/bin/true")) == (0, b"", b"")


def test_killed_child(Popen):
    with Popen(["sleep", "30"]) as proc:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM


@pytest.mark.parametrize(
    "program",
    ["oxio-no-such-program", "/nonexistent/oxio-no-such-program", b"oxio-no-such-program"],
)
def test_a_missing_program(Popen, program):
    err = raised(Popen, [program])
    assert err == (FileNotFoundError, 2, "No such file or directory", program)


def test_a_missing_path_like_program_keeps_its_type_in_the_error(Popen):
    program = pathlib.Path("/nonexistent/oxio-no-such-program")
    assert raised(Popen, [program])[3] is program


def test_the_search_follows_popen_rules(Popen, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    write_program(first / "tool", "#!/bin/sh\necho first\n", 0o644)  # may not be run
    write_program(second / "tool", "#!/bin/sh\necho second\n", 0o755)
    env = {"PATH": f"/nonexistent:/etc/passwd:{first}:{second}"}
    assert run(Popen, ["tool"], env=env) == (0, b"second\n", b"")
    # Nothing runnable: the first error other than "not found" is the one raised.
    env = {"PATH": f"{first}:/nonexistent"}
    assert raised(Popen, ["tool"], env=env) == (
        PermissionError,
        13,
        "Permission denied",
        "tool",
    )
    # An empty entry is the current directory.
    assert run(Popen, ["tool"], env={"PATH": ""}, cwd=second) == (0, b"second\n", b"")


def test_the_search_uses_this_process_path_without_env(Popen, tmp_path, monkeypatch):
    write_program(tmp_path / "oxio-tool", "#!/bin/sh\necho found\n", 0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert run(Popen, ["oxio-tool"]) == (0, b"found\n", b"")
    monkeypatch.delenv("PATH")
    # Without PATH, os.defpath (/bin:/usr/bin) is searched.
    assert run(Popen, ["true"]) == (0, b"", b"")
    assert raised(Popen, ["oxio-tool"])[0] is FileNotFoundError


def test_environment(Popen):
    code = "import os; print(sorted(k for k in os.environ if k.startswith('OXIO')))"
    env = {"OXIO_A": "1", b"OXIO_B": b"2", "PATH": os.environ["PATH"]}
    assert run(Popen, [PY, "-c", code], env=env)[1] == b"['OXIO_A', 'OXIO_B']\n"
    assert run(Popen, ["sh", "-c", "echo $OXIO_SEEN"], env={"OXIO_SEEN": "yes"})[1] == b"yes\n"


@pytest.mark.parametrize(
    "args, kwargs",
    [
        (["echo", "a\0b"], {}),
        (["ec\0ho"], {}),
        (["/bin/ec\0ho"], {}),
        (["true"], {"env": {"A": "b\0c"}}),
        (["true"], {"env": {"A=B": "c"}}),
        (["true"], {"env": {"PATH": "/bin\0:/usr/bin"}}),
        ([1], {}),
        ([], {}),
        (["true"], {"stdin": 999_999}),  # a set-up step fails in the child: no file named
    ],
)
def test_bad_arguments_raise_what_popen_raises(args, kwargs):
    expected = raised(subprocess.Popen, args, **kwargs)
    assert raised(_spawn.Popen, args, **kwargs) == expected


def test_standard_streams(Popen, tmp_path):
    script = 'read line; echo "got $line"; echo to-err >&2'
    with Popen(["sh", "-c", script], stdin=PIPE, stdout=PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.communicate(b"ping\n", timeout=30) == (b"got ping\nto-err\n", None)
    assert run(Popen, ["cat"], stdin=subprocess.DEVNULL) == (0, b"", b"")
    with open(tmp_path / "out", "wb") as out:
        with Popen(["echo", "to file"], stdout=out.fileno()) as proc:
            proc.wait(timeout=30)
    assert (tmp_path / "out").read_bytes() == b"to file\n"


def test_close_fds(Popen):
    read_fd, write_fd = os.pipe()
    os.set_inheritable(read_fd, True)
    try:
        probe = f"test -e /proc/self/fd/{read_fd} && echo open || echo closed"
        assert run(Popen, ["sh", "-c", probe])[1] == b"closed\n"
        assert run(Popen, ["sh", "-c", probe], close_fds=False)[1] == b"open\n"
        assert run(Popen, ["sh", "-c", probe], pass_fds=(read_fd,))[1] == b"open\n"
    finally:
        os.close(read_fd)
        os.close(write_fd)


def sigpipe_ignored(Popen, **kwargs):
    """Whether a child started with `kwargs` ignores SIGPIPE (read from its SigIgn mask)."""
    line = run(Popen, ["grep", "SigIgn", "/proc/self/status"], **kwargs)[1]
    return bool(int(line.split()[1], 16) >> (signal.SIGPIPE - 1) & 1)


def test_restore_signals(Popen):
    # Python ignores SIGPIPE; the child gets the default action back unless told otherwise.
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
    assert not sigpipe_ignored(Popen)
    assert sigpipe_ignored(Popen, restore_signals=False)


def test_new_session(Popen):
    leads_its_session = 'test "$(cut -d" " -f6 /proc/$$/stat)" = $$ && echo yes || echo no'
    assert run(Popen, ["sh", "-c", leads_its_session])[1] == b"no\n"
    assert run(Popen, ["sh", "-c", leads_its_session], start_new_session=True)[1] == b"yes\n"


def test_the_audit_event_is_raised(Popen):
    seen = []

    def hook(event, args):
        if event == "subprocess.Popen" and args[1][:1] == ["oxio-audit"]:
            seen.append(args)

    sys.addaudithook(hook)  # audit hooks cannot be removed; this one ignores other events
    run(Popen, ["oxio-audit", "-c", "true"], executable="sh")
    assert seen == [("sh", ["oxio-audit", "-c", "true"], None, None)]


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"close_fds": False}, {"start_new_session": True}, {"env": {"PATH": "/bin:/usr/bin"}}],
)
def test_common_options_never_reach_fork_exec(monkeypatch, kwargs):
    def fork_exec(*args):
        raise AssertionError("the native path should have started this child")

    monkeypatch.setattr(subprocess, "_fork_exec", fork_exec)
    assert run(_spawn.Popen, ["true"], **kwargs)[0] == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"cwd": "/"}, {"umask": 0o22}, {"process_group": 0}, {"preexec_fn": lambda: None}],
)
def test_other_options_go_to_popen_own_path(monkeypatch, kwargs):
    calls = []
    fork_exec = subprocess._fork_exec

    def counting_fork_exec(*args):
        calls.append(args)
        return fork_exec(*args)

    monkeypatch.setattr(subprocess, "_fork_exec", counting_fork_exec)
    assert run(_spawn.Popen, ["true"], **kwargs)[0] == 0
    assert len(calls) == 1


def test_a_low_descriptor_goes_to_popen_own_path(monkeypatch):
    """A child stream on descriptor 0 to 2 needs Popen's own dup juggling."""
    calls = []
    fork_exec = subprocess._fork_exec
    monkeypatch.setattr(
        subprocess, "_fork_exec", lambda *args: calls.append(args) or fork_exec(*args)
    )
    assert run(_spawn.Popen, ["true"], stdin=0)[0] == 0
    assert len(calls) == 1


def test_the_loop_transport_hands_out_oxios_popen():
    async def main():
        proc = await asyncio.create_subprocess_exec("true")
        await proc.wait()
        return proc._transport.get_extra_info("subprocess")

    popen = oxio.run(main())
    assert isinstance(popen, _spawn.Popen)
    assert popen.returncode == 0
