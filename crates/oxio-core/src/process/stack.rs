//! The stack a spawned child runs on until it execs: mapped once, above a guard page, and
//! reused. A spawn that finds it in use (another thread spawning, or a fork that happened
//! meanwhile and left the lock held in this process) maps a stack of its own for the call.

use std::io;
use std::ptr;
use std::sync::{Mutex, MutexGuard, TryLockError};

use libc::c_void;

/// Enough for the child's few libc calls; glibc's `posix_spawn` gives its child 32 KiB.
const STACK_SIZE: usize = 64 * 1024;

/// A private mapping: one inaccessible guard page, then the stack. Unmapped on drop.
pub(super) struct ChildStack {
    base: *mut c_void,
}

// SAFETY: the mapping is plain memory, used by one spawn at a time.
unsafe impl Send for ChildStack {}

impl ChildStack {
    fn map() -> io::Result<Self> {
        // SAFETY: an anonymous private mapping at an address the kernel picks.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                mapping_size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Self { base };
        // SAFETY: the first page of the mapping just made: an overflow faults there instead of
        // writing below the stack.
        if unsafe { libc::mprotect(base, page_size(), libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The stack's highest address, where a downward-growing stack starts.
    fn top(&self) -> *mut c_void {
        // SAFETY: one past the end of the mapping made in `map`.
        unsafe { self.base.cast::<u8>().add(mapping_size()).cast() }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `map`, which no child uses any more.
        unsafe { libc::munmap(self.base, mapping_size()) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf takes a plain constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

fn mapping_size() -> usize {
    page_size() + STACK_SIZE
}

/// The process's reusable stack, mapped on first use and kept for the process's life.
static SHARED: Mutex<Option<ChildStack>> = Mutex::new(None);

/// A stack for one spawn, nothing else using it until the lease is dropped.
pub(super) struct Lease {
    top: *mut c_void,
    _held: Held,
}

/// What keeps the stack to this spawn: the shared stack's lock, or a stack of its own.
enum Held {
    Shared {
        _guard: MutexGuard<'static, Option<ChildStack>>,
    },
    Own {
        _stack: ChildStack,
    },
}

impl Lease {
    pub(super) fn top(&self) -> *mut c_void {
        self.top
    }
}

/// The shared stack, or, when it is in use, one of the lease's own.
pub(super) fn acquire() -> io::Result<Lease> {
    let mut guard = match SHARED.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => {
            let stack = ChildStack::map()?;
            let top = stack.top();
            return Ok(Lease {
                top,
                _held: Held::Own { _stack: stack },
            });
        }
    };
    let top = match &*guard {
        Some(stack) => stack.top(),
        None => guard.insert(ChildStack::map()?).top(),
    };
    Ok(Lease {
        top,
        _held: Held::Shared { _guard: guard },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_shared_stack_gives_a_stack_of_its_own() {
        let first = acquire().unwrap();
        let second = acquire().unwrap();
        assert!(
            matches!(second._held, Held::Own { .. }) || matches!(first._held, Held::Own { .. })
        );
        assert_ne!(first.top(), second.top());
    }
}
