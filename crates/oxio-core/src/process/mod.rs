//! Starting a child process the way `subprocess.Popen` does (its program search, its errors),
//! in one `vfork`-style `clone` whose child runs `child.rs` and then `exec`s.
//!
//! The child shares this process's memory until it `exec`s, and this thread waits for that, so
//! no page tables are copied and the exec's outcome is read straight from memory: no error
//! pipe. Unlike glibc's `posix_spawn`, the child's stack is reused rather than mapped and
//! unmapped per call, and the search of `PATH` runs in the child, as `Popen`'s does.

mod child;
mod stack;

use std::ffi::{CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::ptr;

use libc::{c_char, c_void, pid_t};

use child::{ChildPlan, Outcome};

extern "C" {
    /// The process's environment, as `execv` passes it on.
    static environ: *const *mut c_char;
}

/// How to start one child: its arguments, environment, standard streams and signals.
pub struct Spawn<'a> {
    /// The argument vector, `argv[0]` included.
    pub argv: &'a [CString],
    /// `NAME=value` entries, or `None` to pass on this process's environment.
    pub env: Option<&'a [CString]>,
    /// The descriptors the child gets as its stdin, stdout and stderr, or -1 to keep this
    /// process's. Each must be -1 or above 2, so that no `dup2` overwrites a descriptor that a
    /// later one still reads (`Popen` checks the same before using `posix_spawn` itself).
    pub stdio: [RawFd; 3],
    /// Close every descriptor above 2 in the child (`Popen`'s `close_fds`).
    pub close_fds: bool,
    /// Give SIGPIPE and SIGXFSZ, which Python ignores, their default action in the child
    /// (`Popen`'s `restore_signals`).
    pub restore_signals: bool,
    /// Make the child the leader of a new session (`Popen`'s `start_new_session`).
    pub new_session: bool,
}

/// Why a child did not start.
#[derive(Debug)]
pub enum SpawnError {
    /// Setting the child up failed before any exec: `Popen` names no file then.
    Setup(io::Error),
    /// No exec succeeded; the error is the one `Popen` reports, naming the program.
    Exec(io::Error),
}

impl Spawn<'_> {
    /// Starts `program`, a path, and returns the child's pid.
    pub fn run(&self, program: &CStr) -> Result<pid_t, SpawnError> {
        self.start(&[program.as_ptr()])
    }

    /// Starts the first program named `file` in the `:`-separated directories of
    /// `search_path`, as `Popen` does: each directory is tried in turn; one where the exec fails
    /// with `ENOENT` or `ENOTDIR` is passed over; the first other error is kept and reported if
    /// no later directory succeeds, and otherwise the last error. `file` and `search_path` must
    /// hold no NUL.
    pub fn run_searching(&self, file: &[u8], search_path: &[u8]) -> Result<pid_t, SpawnError> {
        let candidates: Vec<CString> = search_path
            .split(|&b| b == b':')
            .map(|dir| join(dir, file))
            .collect::<Result<_, _>>()
            .map_err(SpawnError::Exec)?;
        let programs: Vec<*const c_char> = candidates.iter().map(|c| c.as_ptr()).collect();
        self.start(&programs)
    }

    /// Runs the first of `programs` that execs, in a child set up as `self` says.
    fn start(&self, programs: &[*const c_char]) -> Result<pid_t, SpawnError> {
        let argv = null_terminated(self.argv);
        let env = self.env.map(null_terminated);
        let envp = match &env {
            Some(env) => env.as_ptr(),
            // SAFETY: reads the `environ` pointer; it stays valid while the caller holds the
            // lock that serialises changes to the environment (the GIL, for os.environ).
            None => unsafe { environ },
        };
        let stack = stack::lock().map_err(SpawnError::Setup)?;
        let blocked = AllSignalsBlocked::new();
        let mut plan = ChildPlan {
            programs,
            argv: argv.as_ptr(),
            envp,
            stdio: self.stdio,
            close_fds: self.close_fds,
            restore_signals: self.restore_signals,
            new_session: self.new_session,
            mask: blocked.saved,
            outcome: Outcome::Running,
        };
        // NOTE: glibc's posix_spawn, used first, cost the parent 151 µs of CPU per spawn and
        // wait through asyncio, this 134 µs: its child stack was mapped and unmapped per call,
        // and the parent stat'ed each directory of PATH.
        // SAFETY: `child::main` is the entry point of a child that shares this memory (see
        // child.rs); `stack.top()` is the top of a stack nothing else uses while the lock is
        // held; `plan` outlives the child's use of it, since with CLONE_VFORK the call returns
        // only once the child has exec'd or exited. SIGCHLD makes it an ordinary child.
        let pid = unsafe {
            libc::clone(
                child::main,
                stack.top(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                ptr::addr_of_mut!(plan).cast::<c_void>(),
            )
        };
        drop(blocked);
        drop(stack);
        if pid < 0 {
            return Err(SpawnError::Setup(io::Error::last_os_error()));
        }
        // SAFETY: the child has exec'd or exited; it wrote `outcome` before either, and wrote
        // nothing since. The read is volatile because the compiler cannot see that write.
        let outcome = unsafe { ptr::read_volatile(ptr::addr_of!(plan.outcome)) };
        let failure = match outcome {
            Outcome::Running => return Ok(pid),
            Outcome::SetupFailed(errno) => SpawnError::Setup(io::Error::from_raw_os_error(errno)),
            Outcome::ExecFailed(errno) => SpawnError::Exec(io::Error::from_raw_os_error(errno)),
        };
        reap(pid);
        Err(failure)
    }
}

/// Blocks every signal in this thread until dropped, so that no handler runs in the child
/// while it shares this memory; the child unblocks them itself once its handlers are reset.
struct AllSignalsBlocked {
    /// The thread's mask before, which the child gets too.
    saved: libc::sigset_t,
}

impl AllSignalsBlocked {
    fn new() -> Self {
        let mut all = empty_signal_set();
        let mut saved = empty_signal_set();
        // SAFETY: fills a local set and swaps this thread's mask for it, saving the old one.
        unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut saved);
        }
        Self { saved }
    }
}

impl Drop for AllSignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.saved, ptr::null_mut()) };
    }
}

fn empty_signal_set() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        set.assume_init()
    }
}

/// Reaps a child that failed to exec, as `Popen` does, so that it leaves no zombie.
fn reap(pid: pid_t) {
    loop {
        // SAFETY: waits for this process's own child; the status is not wanted.
        let reaped = unsafe { libc::waitpid(pid, ptr::null_mut(), 0) };
        if reaped >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// The pointers of `strings` followed by a null, as `execve` takes them.
fn null_terminated(strings: &[CString]) -> Vec<*mut c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr().cast_mut())
        .chain(std::iter::once(ptr::null_mut()))
        .collect()
}

/// `dir` joined to `file` as `os.path.join` does it; an empty `dir` is the current directory.
fn join(dir: &[u8], file: &[u8]) -> io::Result<CString> {
    let mut path = Vec::with_capacity(dir.len() + 1 + file.len());
    path.extend_from_slice(dir);
    if !dir.is_empty() && !dir.ends_with(b"/") {
        path.push(b'/');
    }
    path.extend_from_slice(file);
    CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}
