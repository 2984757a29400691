//! The stack a spawned child runs on until it execs: mapped once, below a guard page, and
//! reused by every spawn; a lock keeps two spawns from sharing it.

use std::io;
use std::ptr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use libc::c_void;

/// Enough for the child's few libc calls; glibc's `posix_spawn` gives its child 32 KiB.
const STACK_SIZE: usize = 64 * 1024;

pub(super) struct ChildStack {
    /// The lowest address of the mapping: one inaccessible guard page, then the stack.
    base: *mut c_void,
}

// SAFETY: the mapping is plain memory, used by one spawn at a time under `STACK`'s lock.
unsafe impl Send for ChildStack {}

impl ChildStack {
    fn map() -> io::Result<Self> {
        let guard = page_size();
        // SAFETY: an anonymous private mapping at an address the kernel picks.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                guard + STACK_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the first page of the mapping just made: an overflow faults there instead of
        // writing below the stack.
        if unsafe { libc::mprotect(base, guard, libc::PROT_NONE) } != 0 {
            let err = io::Error::last_os_error();
            // SAFETY: unmaps the mapping just made, which nothing else knows of.
            unsafe { libc::munmap(base, guard + STACK_SIZE) };
            return Err(err);
        }
        Ok(Self { base })
    }

    /// The stack's highest address, where a downward-growing stack starts.
    pub(super) fn top(&self) -> *mut c_void {
        // SAFETY: one past the end of the mapping made in `map`.
        unsafe { self.base.cast::<u8>().add(page_size() + STACK_SIZE).cast() }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf takes a plain constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

static STACK: Mutex<Option<ChildStack>> = Mutex::new(None);

/// The stack, mapped on first use, for one spawn at a time.
pub(super) fn lock() -> io::Result<StackGuard> {
    let mut guard = STACK.lock().unwrap_or_else(PoisonError::into_inner);
    if guard.is_none() {
        *guard = Some(ChildStack::map()?);
    }
    Ok(StackGuard(guard))
}

/// Holds the stack's lock; the stack is mapped for as long as the process runs.
pub(super) struct StackGuard(MutexGuard<'static, Option<ChildStack>>);

impl StackGuard {
    pub(super) fn top(&self) -> *mut c_void {
        self.0.as_ref().map_or(ptr::null_mut(), ChildStack::top)
    }
}
