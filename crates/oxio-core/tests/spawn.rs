//! Starting children with `Spawn`: the program search and its errors as `subprocess.Popen`
//! reports them, the standard streams, `close_fds`, the new session and the restored signals.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use oxio_core::{Spawn, SpawnError};

fn strings(items: &[&str]) -> Vec<CString> {
    items.iter().map(|s| CString::new(*s).unwrap()).collect()
}

fn spawn(argv: &[CString]) -> Spawn<'_> {
    Spawn {
        argv,
        env: None,
        stdio: [-1; 3],
        close_fds: false,
        restore_signals: true,
        new_session: false,
    }
}

/// The errno of an exec that failed.
fn exec_errno(outcome: Result<libc::pid_t, SpawnError>) -> Option<i32> {
    match outcome {
        Err(SpawnError::Exec(err)) => err.raw_os_error(),
        other => panic!("expected an exec error, got {other:?}"),
    }
}

/// Reaps `pid` and returns its exit code.
fn exit_code(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waits for a child of this process and writes its status to a local.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "the child was killed: {status:#x}");
    libc::WEXITSTATUS(status)
}

/// A pipe whose ends are above 2 and closed on exec, as `os.pipe()` makes them.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors to a local array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are fresh and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Runs `sh -c script` with its stdout on a pipe and returns what it printed.
fn output_of(configure: impl FnOnce(&mut Spawn<'_>), script: &str) -> String {
    let argv = strings(&["sh", "-c", script]);
    let mut request = spawn(&argv);
    let (read, write) = pipe();
    request.stdio[1] = write.as_raw_fd();
    configure(&mut request);
    let pid = request.run(c"/bin/sh").unwrap();
    drop(write);
    let mut out = String::new();
    fs::File::from(read).read_to_string(&mut out).unwrap();
    assert_eq!(exit_code(pid), 0);
    out
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("oxio-spawn-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_file(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn runs_a_program_by_path_and_reports_its_exit() {
    let argv = strings(&["sh", "-c", "exit 7"]);
    let pid = spawn(&argv).run(c"/bin/sh").unwrap();
    assert_eq!(exit_code(pid), 7);
}

#[test]
fn a_missing_program_is_enoent() {
    let argv = strings(&["nope"]);
    let outcome = spawn(&argv).run(c"/nonexistent/nope");
    assert_eq!(exec_errno(outcome), Some(libc::ENOENT));
}

#[test]
fn the_search_passes_over_missing_directories() {
    let argv = strings(&["sh", "-c", "exit 3"]);
    let pid = spawn(&argv)
        .run_searching(b"sh", b"/nonexistent:/etc/passwd:/bin")
        .unwrap();
    assert_eq!(exit_code(pid), 3);
}

#[test]
fn the_search_keeps_going_past_a_file_it_may_not_run() {
    let first = temp_dir("first");
    let second = temp_dir("second");
    // A script that may not be run (EACCES comes before any ETXTBSY), then a link to a program:
    // no executable is written here, so none can be busy in another test's half-started child.
    write_file(&first.join("tool"), "#!/bin/sh\nexit 9\n", 0o644);
    std::os::unix::fs::symlink("/bin/false", second.join("tool")).unwrap();
    let path = format!("{}:{}", first.display(), second.display());
    let argv = strings(&["tool"]);
    let pid = spawn(&argv)
        .run_searching(b"tool", path.as_bytes())
        .unwrap();
    assert_eq!(exit_code(pid), 1);

    // With no runnable copy, the first error other than "not found" is the one reported.
    let path = format!("{}:/nonexistent", first.display());
    let outcome = spawn(&argv).run_searching(b"tool", path.as_bytes());
    assert_eq!(exec_errno(outcome), Some(libc::EACCES));
    let _ = fs::remove_dir_all(first);
    let _ = fs::remove_dir_all(second);
}

#[test]
fn nothing_found_is_enoent() {
    let argv = strings(&["nope"]);
    let outcome = spawn(&argv).run_searching(b"oxio-no-such-program", b"/bin:/usr/bin");
    assert_eq!(exec_errno(outcome), Some(libc::ENOENT));
}

#[test]
fn an_empty_directory_in_the_path_is_the_current_one() {
    let argv = strings(&["sh", "-c", "exit 4"]);
    assert_eq!(
        exec_errno(spawn(&argv).run_searching(b"sh", b"")),
        Some(libc::ENOENT)
    );
    let pid = spawn(&argv).run_searching(b"sh", b":/bin").unwrap();
    assert_eq!(exit_code(pid), 4);
}

#[test]
fn stdio_descriptors_become_the_childs_streams() {
    let (in_read, in_write) = pipe();
    let argv = strings(&["sh", "-c", "read line; echo \"got $line\"; echo oops >&2"]);
    let (out_read, out_write) = pipe();
    let mut request = spawn(&argv);
    request.stdio = [
        in_read.as_raw_fd(),
        out_write.as_raw_fd(),
        out_write.as_raw_fd(),
    ];
    let pid = request.run(c"/bin/sh").unwrap();
    drop((in_read, out_write));
    let mut input = fs::File::from(in_write);
    input.write_all(b"ping\n").unwrap();
    drop(input);
    let mut out = String::new();
    fs::File::from(out_read).read_to_string(&mut out).unwrap();
    assert_eq!(exit_code(pid), 0);
    assert_eq!(out, "got ping\noops\n");
}

/// An inheritable descriptor (no `O_CLOEXEC`), as `os.set_inheritable` leaves one.
fn inheritable_fd() -> OwnedFd {
    let (read, _write) = pipe();
    // SAFETY: fcntl on a descriptor this test owns.
    let code = unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETFD, 0) };
    assert_eq!(code, 0);
    read
}

fn child_sees(fd: RawFd, close_fds: bool) -> String {
    let script = format!("test -e /proc/self/fd/{fd} && echo open || echo closed");
    output_of(|request| request.close_fds = close_fds, &script)
}

#[test]
fn close_fds_closes_inherited_descriptors() {
    let fd = inheritable_fd();
    assert_eq!(child_sees(fd.as_raw_fd(), false), "open\n");
    assert_eq!(child_sees(fd.as_raw_fd(), true), "closed\n");
}

#[test]
fn restore_signals_gives_sigpipe_its_default_action() {
    // The test harness, like Python, starts with SIGPIPE ignored.
    // SAFETY: sets this process's SIGPIPE disposition to "ignore", a plain value.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let ignored = |restore: bool| {
        let script = "grep SigIgn /proc/self/status";
        let line = output_of(|request| request.restore_signals = restore, script);
        let mask = u64::from_str_radix(line.trim().rsplit('\t').next().unwrap(), 16).unwrap();
        mask & (1 << (libc::SIGPIPE - 1)) != 0
    };
    assert!(ignored(false));
    assert!(!ignored(true));
}

#[test]
fn a_new_session_has_the_child_as_its_leader() {
    let script = "cut -d' ' -f6 /proc/$$/stat; echo $$";
    let own_session = output_of(|_| {}, script);
    let new_session = output_of(|request| request.new_session = true, script);
    let ids = |text: &str| -> Vec<i32> {
        text.split_whitespace()
            .map(|s| s.parse().unwrap())
            .collect()
    };
    let (own, new) = (ids(&own_session), ids(&new_session));
    assert_ne!(own[0], own[1]);
    assert_eq!(
        new[0], new[1],
        "setsid makes the child's pid its session id"
    );
}

#[test]
fn the_environment_is_the_one_given() {
    let argv = strings(&["sh", "-c", "echo \"$GREETING\""]);
    let env = strings(&["GREETING=hello there"]);
    let (read, write) = pipe();
    let mut request = spawn(&argv);
    request.env = Some(&env);
    request.stdio[1] = write.as_raw_fd();
    let pid = request.run(c"/bin/sh").unwrap();
    drop(write);
    let mut out = String::new();
    fs::File::from(read).read_to_string(&mut out).unwrap();
    assert_eq!(exit_code(pid), 0);
    assert_eq!(out, "hello there\n");
}

#[test]
fn a_bad_stdio_descriptor_fails_the_set_up() {
    let argv = strings(&["true"]);
    let mut request = spawn(&argv);
    request.stdio[0] = 999_999;
    match request.run(c"/bin/true") {
        Err(SpawnError::Setup(err)) => assert_eq!(err.raw_os_error(), Some(libc::EBADF)),
        other => panic!("expected a set-up error, got {other:?}"),
    }
}

#[test]
fn the_child_gets_the_signal_mask_back() {
    // The parent blocks every signal around the clone; the child must unblock what the
    // calling thread had not blocked, or this shell would survive its own SIGUSR1.
    let argv = strings(&["sh", "-c", "kill -USR1 $$; echo survived"]);
    let pid = spawn(&argv).run(c"/bin/sh").unwrap();
    let mut status = 0;
    // SAFETY: waits for the child just started.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGUSR1);

    // What the calling thread blocked stays blocked, as with fork and exec.
    let mut usr2 = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: builds a one-signal set and blocks it in this test's thread only.
    unsafe {
        libc::sigemptyset(usr2.as_mut_ptr());
        libc::sigaddset(usr2.as_mut_ptr(), libc::SIGUSR2);
        libc::pthread_sigmask(libc::SIG_BLOCK, usr2.as_ptr(), std::ptr::null_mut());
    }
    // grep itself, not a shell, which may reset its mask.
    let argv = strings(&["grep", "SigBlk", "/proc/self/status"]);
    let mut request = spawn(&argv);
    let (read, write) = pipe();
    request.stdio[1] = write.as_raw_fd();
    let pid = request.run_searching(b"grep", b"/usr/bin:/bin").unwrap();
    // SAFETY: unblocks it again.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, usr2.as_ptr(), std::ptr::null_mut()) };
    drop(write);
    let mut line = String::new();
    fs::File::from(read).read_to_string(&mut line).unwrap();
    assert_eq!(exit_code(pid), 0);
    let mask = u64::from_str_radix(line.trim().rsplit('\t').next().unwrap(), 16).unwrap();
    assert_ne!(mask & (1 << (libc::SIGUSR2 - 1)), 0);
}

#[test]
fn threads_spawning_at_once_each_get_their_child() {
    let workers: Vec<_> = (0..6)
        .map(|worker| {
            std::thread::spawn(move || {
                for round in 0..20 {
                    let code = (worker * 20 + round) % 100;
                    let argv = strings(&["sh", "-c", &format!("exit {code}")]);
                    let pid = spawn(&argv).run(c"/bin/sh").unwrap();
                    assert_eq!(exit_code(pid), code);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
}
