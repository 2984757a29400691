//! What the child runs between the `clone` and the `exec`: `Popen`'s set-up, then its search.
//!
//! The child shares the parent's memory while the parent thread waits, so it is held to what
//! a child of `vfork` may do: async-signal-safe calls only, no allocation, no lock, no panic
//! (none of its code can fail but through a return code), and no write to shared memory but
//! [`ChildPlan::outcome`].

use std::os::fd::RawFd;
use std::ptr;

use libc::{c_char, c_int, c_void};

/// What the parent prepared for the child: everything is built before the `clone`.
pub(super) struct ChildPlan<'a> {
    /// The paths to exec, in order, until one works.
    pub programs: &'a [*const c_char],
    /// Null-terminated arrays, as `execve` takes them.
    pub argv: *const *mut c_char,
    pub envp: *const *mut c_char,
    pub stdio: [RawFd; 3],
    pub close_fds: bool,
    pub restore_signals: bool,
    pub new_session: bool,
    /// The parent thread's signal mask before it blocked everything; the child's own.
    pub mask: libc::sigset_t,
    /// Written by the child, just before it exits, when it did not exec.
    pub outcome: Outcome,
}

/// How far the child got; the parent reads it once the `clone` returns.
#[derive(Clone, Copy)]
pub(super) enum Outcome {
    /// Still the value the parent wrote: the child exec'd.
    Running,
    /// A set-up step failed with this errno; nothing was exec'd.
    SetupFailed(c_int),
    /// Every exec failed; this is the errno `Popen` would report.
    ExecFailed(c_int),
}

/// The highest signal number on the architectures oxio builds for (Linux's `_NSIG` - 1).
const LAST_SIGNAL: c_int = 64;

/// The child's entry point.
pub(super) extern "C" fn main(plan: *mut c_void) -> c_int {
    // SAFETY: the parent passes its `ChildPlan`, which outlives this child's use of it, and
    // does not touch it until the child has exec'd or exited.
    let plan = unsafe { &mut *plan.cast::<ChildPlan<'_>>() };
    let outcome = match set_up(plan) {
        Err(errno) => Outcome::SetupFailed(errno),
        Ok(()) => Outcome::ExecFailed(exec_first(plan)),
    };
    // SAFETY: the write is volatile so that it is not dropped before `_exit`, which never
    // returns; the parent reads it only after the child is gone.
    unsafe {
        ptr::write_volatile(&mut plan.outcome, outcome);
        libc::_exit(127)
    }
}

/// The entry point of the child that checks, once, that a child's writes reach the parent:
/// it sets the `bool` it is given and exits.
pub(super) extern "C" fn probe(written: *mut c_void) -> c_int {
    // SAFETY: the parent passes a `bool` it reads once this child has exited.
    unsafe {
        ptr::write_volatile(written.cast::<bool>(), true);
        libc::_exit(0)
    }
}

/// `_posixsubprocess`'s child set-up for the options `Spawn` takes, in its order.
fn set_up(plan: &ChildPlan<'_>) -> Result<(), c_int> {
    reset_signal_handlers(&plan.mask, plan.restore_signals);
    // SAFETY: sets this thread's mask from a set the parent initialised.
    check_errno(unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &plan.mask, ptr::null_mut()) })?;
    for (target, &fd) in (0..).zip(plan.stdio.iter()) {
        if fd != -1 {
            // SAFETY: dup2 on plain descriptors (a new one is not close-on-exec).
            check(unsafe { libc::dup2(fd, target) })?;
        }
    }
    if plan.new_session {
        // SAFETY: setsid takes no arguments.
        check(unsafe { libc::setsid() })?;
    }
    if plan.close_fds {
        close_from(3);
    }
    Ok(())
}

/// Gives every signal with a handler its default action, so that none of the parent's handlers
/// runs in the child once `mask` is restored; with `restore_signals`, SIGPIPE and SIGXFSZ too,
/// which Python ignores. A signal `mask` blocks cannot arrive before the exec, which resets its
/// handler anyway, so it is left alone (as `_posixsubprocess` does).
pub(super) fn reset_signal_handlers(mask: &libc::sigset_t, restore_signals: bool) {
    for signal in 1..=LAST_SIGNAL {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        let restored = restore_signals && (signal == libc::SIGPIPE || signal == libc::SIGXFSZ);
        // SAFETY: asks whether a signal is in a set the parent initialised.
        if !restored && unsafe { libc::sigismember(mask, signal) } == 1 {
            continue;
        }
        // SAFETY: reads one signal's disposition into a zeroed `sigaction` (glibc refuses its
        // own internal signals with EINVAL, which leaves them as they are).
        let handler = unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, ptr::null(), &mut current) != 0 {
                continue;
            }
            current.sa_sigaction
        };
        if restored || (handler != libc::SIG_DFL && handler != libc::SIG_IGN) {
            // SAFETY: a zeroed `sigaction` is SIG_DFL with an empty mask and no flags.
            unsafe {
                let default: libc::sigaction = std::mem::zeroed();
                libc::sigaction(signal, &default, ptr::null_mut());
            }
        }
    }
}

/// Closes every descriptor from `lowest` up, as `close_fds` asks.
pub(super) fn close_from(lowest: c_int) {
    // SAFETY: close_range takes plain numbers.
    if unsafe { libc::syscall(libc::SYS_close_range, lowest, c_int::MAX, 0) } == 0 {
        return;
    }
    // Kernels before 5.9, or a seccomp filter that refuses close_range: close what is open,
    // as listed by /proc (looping over every possible descriptor could mean a billion calls).
    if !close_listed(lowest) {
        close_each_possible(lowest);
    }
}

/// Closes the descriptors from `lowest` up that /proc/self/fd lists; false if it cannot be read.
fn close_listed(lowest: c_int) -> bool {
    // SAFETY: opens a directory by a C string path.
    let dir = unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return false;
    }
    let mut entries = [0u8; 2048];
    loop {
        // SAFETY: getdents64 fills at most `entries.len()` bytes of a local buffer.
        let filled = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir,
                entries.as_mut_ptr(),
                entries.len(),
            )
        };
        let Ok(filled @ 1..) = usize::try_from(filled) else {
            break;
        };
        for fd in listed_descriptors(entries.get(..filled).unwrap_or_default()) {
            if fd >= lowest && fd != dir {
                // SAFETY: closes a descriptor number; closing one while listing is safe.
                unsafe { libc::close(fd) };
            }
        }
    }
    // SAFETY: closes the directory opened above.
    unsafe { libc::close(dir) };
    true
}

/// The descriptor numbers named by the `linux_dirent64` records in `entries`: `d_reclen` is the
/// `u16` at offset 16, the name a NUL-terminated string from offset 19. Never panics.
fn listed_descriptors(entries: &[u8]) -> impl Iterator<Item = c_int> + '_ {
    let mut rest = entries;
    std::iter::from_fn(move || loop {
        let length = usize::from(u16::from_ne_bytes(rest.get(16..18)?.try_into().ok()?));
        let record = rest.get(..length).filter(|_| length > 19)?;
        rest = rest.get(length..).unwrap_or_default();
        let name = record.get(19..).unwrap_or_default();
        let name = name.split(|&b| b == 0).next().unwrap_or_default();
        if let Some(fd) = parse_descriptor(name) {
            return Some(fd);
        }
    })
}

/// A decimal descriptor number, or `None` for "." and "..".
fn parse_descriptor(name: &[u8]) -> Option<c_int> {
    if name.is_empty() {
        return None;
    }
    name.iter().try_fold(0 as c_int, |fd, &digit| {
        let digit = c_int::from(digit.checked_sub(b'0').filter(|d| *d <= 9)?);
        fd.checked_mul(10)?.checked_add(digit)
    })
}

/// Closes every descriptor number from `lowest` to the descriptor limit.
fn close_each_possible(lowest: c_int) {
    // SAFETY: getrlimit writes a local; close takes a plain number and may fail harmlessly.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        let highest = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            c_int::try_from(limit.rlim_cur).unwrap_or(c_int::MAX)
        } else {
            c_int::MAX
        };
        for fd in lowest..highest {
            libc::close(fd);
        }
    }
}

/// Execs each program in turn; returns the errno to report if none worked: the first that is
/// neither `ENOENT` nor `ENOTDIR`, else the last (`_posixsubprocess`'s rule).
fn exec_first(plan: &ChildPlan<'_>) -> c_int {
    let mut first_other = 0;
    let mut last = libc::ENOENT;
    for &program in plan.programs {
        // SAFETY: a C string and two null-terminated arrays the parent keeps alive; execve
        // returns only on failure.
        let errno = unsafe {
            libc::execve(program, plan.argv.cast(), plan.envp.cast());
            *libc::__errno_location()
        };
        if errno != libc::ENOENT && errno != libc::ENOTDIR && first_other == 0 {
            first_other = errno;
        }
        last = errno;
    }
    if first_other != 0 {
        first_other
    } else {
        last
    }
}

/// A libc return value of -1 as `Err(errno)`.
fn check(code: c_int) -> Result<(), c_int> {
    if code == -1 {
        // SAFETY: reads errno, which the failed call set.
        Err(unsafe { *libc::__errno_location() })
    } else {
        Ok(())
    }
}

/// A returned error number (pthread functions) as `Err(errno)`.
fn check_errno(code: c_int) -> Result<(), c_int> {
    match code {
        0 => Ok(()),
        errno => Err(errno),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `body` in a forked copy of this process and returns its exit code: these functions
    /// change process-wide state (descriptors, signal handlers) that the test harness shares.
    fn in_forked_child(body: impl FnOnce() -> bool) -> bool {
        // SAFETY: the child runs only async-signal-safe code (`body` below) and `_exit`s.
        match unsafe { libc::fork() } {
            0 => {
                let passed = body();
                // SAFETY: leaves the forked child without running the harness's exit code.
                unsafe { libc::_exit(if passed { 0 } else { 1 }) }
            }
            pid => {
                let mut status = 0;
                // SAFETY: waits for the child just forked.
                assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
            }
        }
    }

    fn disposition(signal: c_int) -> libc::sighandler_t {
        // SAFETY: reads one signal's disposition into a zeroed struct.
        unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            libc::sigaction(signal, ptr::null(), &mut current);
            current.sa_sigaction
        }
    }

    extern "C" fn on_signal(_: c_int) {}

    #[test]
    fn handlers_go_back_to_default_and_ignored_signals_stay_ignored() {
        assert!(in_forked_child(|| {
            let handler = on_signal as extern "C" fn(c_int) as libc::sighandler_t;
            let mut blocked = crate::process::empty_signal_set();
            // SAFETY: sets dispositions in this forked child and builds a local set.
            unsafe {
                libc::signal(libc::SIGUSR1, handler);
                libc::signal(libc::SIGUSR2, handler);
                libc::signal(libc::SIGPIPE, libc::SIG_IGN);
                libc::signal(libc::SIGHUP, libc::SIG_IGN);
                libc::sigaddset(&mut blocked, libc::SIGUSR2);
            }
            reset_signal_handlers(&blocked, false);
            let kept = disposition(libc::SIGUSR1) == libc::SIG_DFL
                && disposition(libc::SIGUSR2) == handler // blocked until the exec resets it
                && disposition(libc::SIGPIPE) == libc::SIG_IGN
                && disposition(libc::SIGHUP) == libc::SIG_IGN;
            reset_signal_handlers(&blocked, true);
            kept && disposition(libc::SIGPIPE) == libc::SIG_DFL
                && disposition(libc::SIGHUP) == libc::SIG_IGN
        }));
    }

    fn is_open(fd: c_int) -> bool {
        // SAFETY: asks for a descriptor's flags.
        unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
    }

    #[test]
    fn descriptors_listed_by_proc_are_closed_from_the_lowest_up() {
        assert!(in_forked_child(|| {
            // SAFETY: duplicates stdout onto numbers above and below the lowest one closed.
            unsafe {
                libc::dup2(1, 40);
                libc::dup2(1, 60);
                libc::dup2(1, 1000);
            }
            let listed = close_listed(50);
            listed && is_open(40) && !is_open(60) && !is_open(1000) && is_open(1)
        }));
    }

    #[test]
    fn dirent_records_are_parsed_without_panicking() {
        fn record(name: &str) -> Vec<u8> {
            let length = (19 + name.len() + 1).next_multiple_of(8);
            let mut bytes = vec![0u8; length];
            bytes[16..18].copy_from_slice(&(length as u16).to_ne_bytes());
            bytes[19..19 + name.len()].copy_from_slice(name.as_bytes());
            bytes
        }
        let entries = [
            record("."),
            record(".."),
            record("0"),
            record("17"),
            record("4096"),
        ];
        let buffer = entries.concat();
        assert_eq!(
            listed_descriptors(&buffer).collect::<Vec<_>>(),
            [0, 17, 4096]
        );
        // Truncated or corrupt buffers end the listing instead of panicking.
        assert_eq!(listed_descriptors(&buffer[..30]).count(), 0);
        let mut corrupt = record("5");
        corrupt[16] = 0;
        assert_eq!(listed_descriptors(&corrupt).count(), 0);
        assert_eq!(parse_descriptor(b"99999999999"), None);
    }
}
