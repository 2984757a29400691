"""`Popen`, a `subprocess.Popen` whose common child starts in oxio's native spawn.

`subprocess.Popen` starts a child through `_posixsubprocess.fork_exec`: it builds the list of
paths to try in Python, opens an error pipe, `vfork`s, and reads the pipe to learn whether an
exec worked. `oxio._oxio.spawn` does the same in Rust (`oxio-core`'s `process/`): the child
shares the parent's memory until it execs, tries the paths itself with `Popen`'s rules, and
leaves its outcome in that memory, so there is no pipe, and the child's stack is reused.

Only `_execute_child` is replaced, so everything else (argument checks, pipes, `wait`, `poll`,
`send_signal`, the object `get_extra_info('subprocess')` returns) is `Popen`'s own. The native
path takes the options it reproduces exactly: the program search and its errors, `env`, the
standard streams, `close_fds`, `restore_signals` and `start_new_session`. Anything else
(`preexec_fn`, `cwd`, `pass_fds`, `user`, `group`, `extra_groups`, `umask`, `process_group`, a
standard stream on descriptor 0 to 2) goes to `Popen`'s own `_execute_child`.
"""

import os
import subprocess
import sys

from . import _oxio

_STDLIB_POPEN = subprocess.Popen


def popen_class():
    """The class a child is started with: oxio's `Popen`, unless `subprocess.Popen` has been
    replaced since (tests mock it), in which case the replacement, which asyncio would call."""
    current = subprocess.Popen
    return Popen if current is _STDLIB_POPEN else current


class Popen(subprocess.Popen):
    def _execute_child(self, *options):
        if not _start_natively(self, *options):
            super()._execute_child(*options)


def _start_natively(
    popen,
    args,
    executable,
    preexec_fn,
    close_fds,
    pass_fds,
    cwd,
    env,
    startupinfo,
    creationflags,
    shell,
    p2cread,
    p2cwrite,
    c2pread,
    c2pwrite,
    errread,
    errwrite,
    restore_signals,
    gid,
    gids,
    uid,
    umask,
    start_new_session,
    process_group,
):
    """`Popen._execute_child` for the options the native path reproduces; False, having done
    nothing, for any other. Takes `_execute_child`'s arguments, in its order."""
    stdio = (p2cread, c2pwrite, errwrite)
    if not (
        preexec_fn is None
        and not pass_fds
        and cwd is None
        and gid is None
        and gids is None
        and uid is None
        and umask < 0
        and process_group == -1
        and all(fd == -1 or fd > 2 for fd in stdio)
        # Popen's switch for programs that vfork breaks: oxio's child is a vfork child too.
        and subprocess._USE_VFORK
        and _oxio.spawn_supported()
    ):
        return False

    # From here to the audit event, Popen's own steps: the same arguments reach the child.
    if isinstance(args, (str, bytes)):
        args = [args]
    elif isinstance(args, os.PathLike):
        if shell:
            raise TypeError("path-like args is not allowed when shell is true")
        args = [args]
    else:
        args = list(args)
    if shell:
        args = ["/bin/sh", "-c", *args]
        if executable:
            args[0] = executable
    if executable is None:
        executable = args[0]
    sys.audit("subprocess.Popen", executable, args, cwd, env)

    program = os.fsencode(executable)
    popen.pid = _oxio.spawn(
        program,
        [os.fsencode(arg) for arg in args],
        env=None if env is None else _environment(env),
        # A name without a slash is looked up in PATH; a path is run as it is.
        search_path=None if b"/" in program else _search_path(env),
        stdio=stdio,
        close_fds=close_fds,
        restore_signals=restore_signals,
        new_session=start_new_session,
        filename=executable,
    )
    popen._child_created = True
    popen._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)
    return True


def _environment(env):
    """`env` as `Popen` hands it to the child: `NAME=value` entries, file-system encoded."""
    entries = []
    for name, value in env.items():
        name = os.fsencode(name)
        if b"=" in name:
            raise ValueError("illegal environment variable name")
        entries.append(name + b"=" + os.fsencode(value))
    return entries


def _search_path(env):
    """The directories `Popen` tries a bare program name in, as one `:`-separated string."""
    if env is None:
        # os.get_exec_path()'s answer for os.environ, without its warnings filter and split.
        return os.environb.get(b"PATH", os.fsencode(os.defpath))
    return os.fsencode(os.pathsep.join(os.get_exec_path(env)))


def _same_signature():
    """Whether this Python's `Popen._execute_child` takes the arguments `_start_natively`
    expects; if a later version changes them, subprocesses use `subprocess.Popen` unchanged."""
    ours = _start_natively.__code__
    theirs = subprocess.Popen._execute_child.__code__
    return ours.co_varnames[1 : ours.co_argcount] == theirs.co_varnames[1 : theirs.co_argcount]


if not _same_signature():
    Popen = subprocess.Popen  # noqa: F811
