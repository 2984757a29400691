//! Starting a child process in one `posix_spawn`, with `subprocess.Popen`'s rules for the
//! program search and for the errors it reports.
//!
//! glibc's `posix_spawn` is a `vfork` and an `exec` whose failure comes back to the parent as
//! the return value, so there is no error pipe to create and read, and the child has exited and
//! been reaped by the time an error is returned.

use std::ffi::{CStr, CString};
use std::io;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::ptr;
use std::sync::OnceLock;

use libc::{c_char, c_int, pid_t, posix_spawn_file_actions_t, posix_spawnattr_t};

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

impl Spawn<'_> {
    /// Whether `close_fds` can be honoured: it needs glibc 2.34's
    /// `posix_spawn_file_actions_addclosefrom_np`, which is looked up when the process runs so
    /// that the library still loads on an older glibc.
    pub fn can_close_fds() -> bool {
        add_close_from().is_some()
    }

    /// Starts `program`, a path, and returns the child's pid.
    pub fn run(&self, program: &CStr) -> io::Result<pid_t> {
        Setup::new(self)?.spawn(program)
    }

    /// Starts the first program named `file` in the `:`-separated directories of
    /// `search_path`, as `Popen` does: a directory where the exec fails with `ENOENT` or
    /// `ENOTDIR` is passed over; the first other error is kept and reported if no later
    /// directory succeeds, and otherwise the last error.
    pub fn run_searching(&self, file: &[u8], search_path: &[u8]) -> io::Result<pid_t> {
        let setup = Setup::new(self)?;
        let mut first_other: Option<io::Error> = None;
        let mut last = io::Error::from_raw_os_error(libc::ENOENT);
        for dir in search_path.split(|&b| b == b':') {
            let candidate = join(dir, file)?;
            // NOTE: an exec costs a vfork (~50 µs here); a stat costs ~1 µs. A path that
            // cannot be stat'ed for these reasons cannot be executed for them either.
            let outcome = match stat_error(&candidate) {
                Some(err) if is_not_found(&err) => Err(err),
                _ => setup.spawn(&candidate),
            };
            match outcome {
                Ok(pid) => return Ok(pid),
                Err(err) if is_not_found(&err) => last = err,
                Err(err) => {
                    first_other.get_or_insert(err);
                }
            }
        }
        Err(first_other.unwrap_or(last))
    }
}

/// The `posix_spawn` arguments of one [`Spawn`], built once and used for each program tried.
/// The pointer vectors point into the `Spawn`'s strings, hence the lifetime.
struct Setup<'a> {
    attr: SpawnAttr,
    actions: FileActions,
    argv: Vec<*mut c_char>,
    envp: Option<Vec<*mut c_char>>,
    strings: PhantomData<&'a CString>,
}

impl<'a> Setup<'a> {
    fn new(spawn: &Spawn<'a>) -> io::Result<Self> {
        let mut attr = SpawnAttr::new()?;
        let mut flags = 0;
        if spawn.restore_signals {
            attr.set_default_signals(&[libc::SIGPIPE, libc::SIGXFSZ])?;
            flags |= libc::POSIX_SPAWN_SETSIGDEF;
        }
        if spawn.new_session {
            flags |= c_int::from(libc::POSIX_SPAWN_SETSID);
        }
        attr.set_flags(flags)?;

        let mut actions = FileActions::new()?;
        for (target, &fd) in spawn.stdio.iter().enumerate() {
            if fd != -1 {
                debug_assert!(fd > 2, "a child's stdio descriptor must be above 2");
                actions.dup2(fd, target as c_int)?;
            }
        }
        if spawn.close_fds {
            let close_from = add_close_from().ok_or_else(|| {
                io::Error::new(io::ErrorKind::Unsupported, "close_fds needs glibc 2.34")
            })?;
            actions.close_from(close_from, 3)?;
        }
        Ok(Self {
            attr,
            actions,
            argv: null_terminated(spawn.argv),
            envp: spawn.env.map(null_terminated),
            strings: PhantomData,
        })
    }

    fn spawn(&self, program: &CStr) -> io::Result<pid_t> {
        let envp = match &self.envp {
            Some(envp) => envp.as_ptr(),
            // SAFETY: reading the `environ` pointer; it stays valid while the caller holds the
            // lock that serialises changes to the environment (the GIL, for os.environ).
            None => unsafe { environ },
        };
        let mut pid: pid_t = 0;
        // SAFETY: every pointer is valid for the call: `program` is a C string, `argv` and
        // `envp` are null-terminated arrays of C strings that outlive `self`, and the attributes
        // and file actions were initialised by their constructors.
        let code = unsafe {
            libc::posix_spawn(
                &mut pid,
                program.as_ptr(),
                self.actions.as_ptr(),
                self.attr.as_ptr(),
                self.argv.as_ptr(),
                envp,
            )
        };
        match code {
            0 => Ok(pid),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

type AddCloseFrom = unsafe extern "C" fn(*mut posix_spawn_file_actions_t, c_int) -> c_int;

fn add_close_from() -> Option<AddCloseFrom> {
    static ADD_CLOSE_FROM: OnceLock<Option<AddCloseFrom>> = OnceLock::new();
    *ADD_CLOSE_FROM.get_or_init(|| {
        let name = c"posix_spawn_file_actions_addclosefrom_np";
        // SAFETY: dlsym with RTLD_DEFAULT and a C string only looks a symbol up.
        let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        // SAFETY: glibc declares this symbol with exactly `AddCloseFrom`'s signature.
        (!symbol.is_null()).then(|| unsafe { std::mem::transmute::<_, AddCloseFrom>(symbol) })
    })
}

/// An initialised `posix_spawnattr_t`, destroyed on drop.
struct SpawnAttr(Box<MaybeUninit<posix_spawnattr_t>>);

impl SpawnAttr {
    fn new() -> io::Result<Self> {
        let mut attr = Box::new(MaybeUninit::uninit());
        // SAFETY: initialises the attribute object in place.
        check(unsafe { libc::posix_spawnattr_init(attr.as_mut_ptr()) })?;
        Ok(Self(attr))
    }

    fn as_ptr(&self) -> *const posix_spawnattr_t {
        self.0.as_ptr()
    }

    fn set_flags(&mut self, flags: c_int) -> io::Result<()> {
        // `c_short` by POSIX; every flag used here fits.
        // SAFETY: the attribute object was initialised in `new`.
        check(unsafe { libc::posix_spawnattr_setflags(self.0.as_mut_ptr(), flags as _) })
    }

    fn set_default_signals(&mut self, signals: &[c_int]) -> io::Result<()> {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises `set`; sigaddset is given valid signal numbers; the
        // attribute object was initialised in `new` and copies the set.
        unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            for &signal in signals {
                libc::sigaddset(set.as_mut_ptr(), signal);
            }
            check(libc::posix_spawnattr_setsigdefault(
                self.0.as_mut_ptr(),
                set.as_ptr(),
            ))
        }
    }
}

impl Drop for SpawnAttr {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe { libc::posix_spawnattr_destroy(self.0.as_mut_ptr()) };
    }
}

/// An initialised `posix_spawn_file_actions_t`, destroyed on drop.
struct FileActions(Box<MaybeUninit<posix_spawn_file_actions_t>>);

impl FileActions {
    fn new() -> io::Result<Self> {
        let mut actions = Box::new(MaybeUninit::uninit());
        // SAFETY: initialises the file-actions object in place.
        check(unsafe { libc::posix_spawn_file_actions_init(actions.as_mut_ptr()) })?;
        Ok(Self(actions))
    }

    fn as_ptr(&self) -> *const posix_spawn_file_actions_t {
        self.0.as_ptr()
    }

    fn dup2(&mut self, fd: RawFd, target: RawFd) -> io::Result<()> {
        // SAFETY: the object was initialised in `new`; the call only records the action.
        check(unsafe { libc::posix_spawn_file_actions_adddup2(self.0.as_mut_ptr(), fd, target) })
    }

    fn close_from(&mut self, add: AddCloseFrom, lowest: RawFd) -> io::Result<()> {
        // SAFETY: as for `dup2`; `add` is glibc's function of that signature.
        check(unsafe { add(self.0.as_mut_ptr(), lowest) })
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe { libc::posix_spawn_file_actions_destroy(self.0.as_mut_ptr()) };
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

fn stat_error(path: &CStr) -> Option<io::Error> {
    let mut status = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a C string and room for one `stat`.
    let code = unsafe { libc::stat(path.as_ptr(), status.as_mut_ptr()) };
    (code != 0).then(io::Error::last_os_error)
}

fn is_not_found(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR))
}

fn check(code: c_int) -> io::Result<()> {
    match code {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}
