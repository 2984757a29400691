//! Starting a child process the way `subprocess.Popen` does (its program search, its errors),
//! in one `vfork`-style `clone` whose child runs `child.rs` and then `exec`s.
//!
//! The child shares this process's memory until it `exec`s, and this thread waits for that, so
//! no page tables are copied and the exec's outcome is read straight from memory: no error
//! pipe. Unlike glibc's `posix_spawn`, the child's stack is reused rather than mapped and
//! unmapped per call, and the search of `PATH` runs in the child, as `Popen`'s does. Where a
//! child cannot share this memory (see [`Spawn::supported`]), nothing is started and the
//! caller uses another way.

mod child;
mod stack;

use std::ffi::{CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::ptr;
use std::sync::OnceLock;

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
    /// This process cannot share its memory with a child (a glibc older than 2.25, or `vfork`
    /// emulated by a fork, as under qemu-user or Valgrind): nothing was started, and the
    /// caller should start the child another way.
    Unsupported,
    /// Setting the child up failed before any exec: `Popen` names no file then.
    Setup(io::Error),
    /// No exec succeeded; the error is the one `Popen` reports, naming the program.
    Exec(io::Error),
}

impl Spawn<'_> {
    /// Whether this process can start children this way; the first call checks, by starting a
    /// child that exits at once. Where it cannot, every spawn returns
    /// [`SpawnError::Unsupported`].
    pub fn supported() -> bool {
        shares_memory_with_children()
    }

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
        if !shares_memory_with_children() {
            return Err(SpawnError::Unsupported);
        }
        let argv = null_terminated(self.argv);
        let env = self.env.map(null_terminated);
        let envp = match &env {
            Some(env) => env.as_ptr(),
            // SAFETY: reads the `environ` pointer. The child reads the array it points to,
            // which a `setenv` in another thread could reallocate meanwhile: the same race as
            // `execv` in `_posixsubprocess`'s child, which also runs without the GIL.
            None => unsafe { environ },
        };
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
        let pid = clone_sharing_memory(child::main, ptr::addr_of_mut!(plan).cast());
        drop(blocked);
        let pid = pid.map_err(SpawnError::Setup)?;
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

/// Starts `entry(arg)` in a child that shares this process's memory, on a stack of its own, and
/// returns once that child has exec'd or exited (CLONE_VFORK). `entry` must do only what a
/// `vfork` child may (see child.rs), and `arg` must stay valid until this returns. Every signal
/// should be blocked in this thread meanwhile, so that none of its handlers runs in the child.
fn clone_sharing_memory(
    entry: extern "C" fn(*mut c_void) -> libc::c_int,
    arg: *mut c_void,
) -> io::Result<pid_t> {
    let stack = stack::acquire()?;
    // SAFETY: `entry` and `arg` are as this function requires; `stack.top()` is the top of a
    // stack that nothing else uses while `stack` is held, and the child stops using it when
    // it execs or exits, before this call returns. SIGCHLD makes it an ordinary child.
    let pid = unsafe {
        libc::clone(
            entry,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            arg,
        )
    };
    // Read errno before anything else can change it (releasing the stack may call futex).
    let result = if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid)
    };
    drop(stack);
    result
}

/// Whether a child started by `clone_sharing_memory` really shares this memory, checked once:
/// glibc before 2.25 corrupted the parent thread's cached ids in such a child, and qemu-user
/// and Valgrind turn the clone into a fork, so that the child's report would never arrive.
fn shares_memory_with_children() -> bool {
    static SHARES: OnceLock<bool> = OnceLock::new();
    *SHARES.get_or_init(|| glibc_at_least(2, 25) && probe_child_writes_reach_parent())
}

fn probe_child_writes_reach_parent() -> bool {
    let mut written = false;
    let blocked = AllSignalsBlocked::new();
    let pid = clone_sharing_memory(child::probe, ptr::addr_of_mut!(written).cast());
    drop(blocked);
    let Ok(pid) = pid else {
        return false;
    };
    reap(pid);
    // SAFETY: the child wrote the flag, if it shares this memory, before it exited; volatile
    // because the compiler cannot see that write.
    unsafe { ptr::read_volatile(ptr::addr_of!(written)) }
}

fn glibc_at_least(major: u32, minor: u32) -> bool {
    // SAFETY: glibc returns a static string such as "2.36".
    let version = unsafe { CStr::from_ptr(libc::gnu_get_libc_version()) };
    let mut parts = version
        .to_str()
        .unwrap_or("")
        .split('.')
        .map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(found_major)), Some(Ok(found_minor))) => {
            (found_major, found_minor) >= (major, minor)
        }
        _ => false,
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

pub(super) fn empty_signal_set() -> libc::sigset_t {
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
