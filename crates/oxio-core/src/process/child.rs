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

/// `_posixsubprocess`'s child set-up for the options `Spawn` takes, in its order.
fn set_up(plan: &ChildPlan<'_>) -> Result<(), c_int> {
    reset_signal_handlers(plan.restore_signals);
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
/// runs in the child once signals are unblocked; with `restore_signals`, SIGPIPE and SIGXFSZ
/// too, which Python ignores.
fn reset_signal_handlers(restore_signals: bool) {
    for signal in 1..=LAST_SIGNAL {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        let restored = restore_signals && (signal == libc::SIGPIPE || signal == libc::SIGXFSZ);
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
fn close_from(lowest: c_int) {
    // SAFETY: close_range takes plain numbers.
    let closed = unsafe { libc::syscall(libc::SYS_close_range, lowest, c_int::MAX, 0) } == 0;
    if closed {
        return;
    }
    // Kernels before 5.9: close each possible descriptor.
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
