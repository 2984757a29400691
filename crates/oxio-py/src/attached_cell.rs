//! `AttachedCell`: interior mutability for state that only threads attached to the interpreter
//! touch, without an atomic operation on builds with a GIL.
//!
//! pyo3 guards a mutable `#[pyclass]` with a borrow flag changed by atomic read-modify-writes,
//! since free-threaded builds need them. A handle was borrowed three times per callback (to
//! refill, to run and to recycle it), and those six atomic operations each stalled the
//! pipeline. On a build with a GIL, a thread that holds a `Python` token holds the GIL, so the
//! GIL already serialises every access: a plain flag, caught re-entry and all, is enough.
//! Free-threaded builds keep a mutex.
//!
//! No Python code may run while the cell is locked: it could hand the GIL to another thread,
//! or re-enter the locked object. Values leave the cell before they are called or dropped. The
//! guard borrows the `Python` token, so it cannot outlive the attachment it was locked under
//! nor move to another thread.

#[cfg(Py_GIL_DISABLED)]
pub use free_threaded::{AttachedCell, AttachedRef};
#[cfg(not(Py_GIL_DISABLED))]
pub use gil::{AttachedCell, AttachedRef};

#[cfg(not(Py_GIL_DISABLED))]
mod gil {
    use std::cell::{Cell, UnsafeCell};
    use std::marker::PhantomData;
    use std::ops::{Deref, DerefMut};

    use pyo3::Python;

    pub struct AttachedCell<T> {
        value: UnsafeCell<T>,
        locked: Cell<bool>,
    }

    // SAFETY: every access goes through `lock` or `try_lock`, which take a `Python` token, so
    // the calling thread holds the GIL: accesses from different threads never overlap, and the
    // GIL's hand-over orders them. `locked` turns re-entry on one thread into a panic or `None`
    // instead of a second `&mut T`. `T: Send` since the value may be dropped by any thread.
    unsafe impl<T: Send> Sync for AttachedCell<T> {}

    impl<T> AttachedCell<T> {
        pub const fn new(value: T) -> Self {
            Self {
                value: UnsafeCell::new(value),
                locked: Cell::new(false),
            }
        }

        /// The value, for as long as the guard lives.
        ///
        /// # Panics
        /// If this thread holds the cell already: code run under a lock re-entered it.
        #[inline(always)]
        pub fn lock<'py>(&self, py: Python<'py>) -> AttachedRef<'_, 'py, T> {
            match self.try_lock(py) {
                Some(guard) => guard,
                None => already_locked(),
            }
        }

        /// The value, unless the cell is locked: a garbage collection that starts under a
        /// lock and visits this object finds it so.
        #[inline(always)]
        pub fn try_lock<'py>(&self, _py: Python<'py>) -> Option<AttachedRef<'_, 'py, T>> {
            if self.locked.replace(true) {
                return None;
            }
            Some(AttachedRef {
                cell: self,
                _attached: PhantomData,
            })
        }

        /// The value, through exclusive access to the cell.
        pub fn get_mut(&mut self) -> &mut T {
            self.value.get_mut()
        }
    }

    #[cold]
    #[inline(never)]
    fn already_locked() -> ! {
        panic!("oxio: re-entered an object whose state was being changed")
    }

    /// The locked value. Holding `Python<'py>` keeps it to the attachment it was locked
    /// under, and to this thread (`Python` is neither `Send` nor `Sync`).
    pub struct AttachedRef<'a, 'py, T> {
        cell: &'a AttachedCell<T>,
        _attached: PhantomData<Python<'py>>,
    }

    impl<T> Deref for AttachedRef<'_, '_, T> {
        type Target = T;

        #[inline(always)]
        fn deref(&self) -> &T {
            // SAFETY: this guard is the only one (`locked`), and the GIL keeps other threads
            // out while it lives.
            unsafe { &*self.cell.value.get() }
        }
    }

    impl<T> DerefMut for AttachedRef<'_, '_, T> {
        #[inline(always)]
        fn deref_mut(&mut self) -> &mut T {
            // SAFETY: as for `deref`; `&mut self` keeps the guard's own borrows exclusive.
            unsafe { &mut *self.cell.value.get() }
        }
    }

    impl<T> Drop for AttachedRef<'_, '_, T> {
        #[inline(always)]
        fn drop(&mut self) {
            self.cell.locked.set(false);
        }
    }
}

#[cfg(Py_GIL_DISABLED)]
mod free_threaded {
    use std::marker::PhantomData;
    use std::ops::{Deref, DerefMut};
    use std::sync::{Mutex, MutexGuard, TryLockError};

    use pyo3::Python;

    pub struct AttachedCell<T>(Mutex<T>);

    /// The locked value, tied to the attachment it was locked under, as on GIL builds.
    pub struct AttachedRef<'a, 'py, T> {
        guard: MutexGuard<'a, T>,
        _attached: PhantomData<Python<'py>>,
    }

    impl<T> AttachedCell<T> {
        pub const fn new(value: T) -> Self {
            Self(Mutex::new(value))
        }

        /// The value, for as long as the guard lives; waits for another thread's lock. A
        /// thread that locks the cell again deadlocks rather than panics, as a mutex does.
        pub fn lock<'py>(&self, _py: Python<'py>) -> AttachedRef<'_, 'py, T> {
            // Nothing under these locks can panic; if something ever does, carrying on beats
            // aborting the interpreter.
            let guard = self
                .0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            AttachedRef {
                guard,
                _attached: PhantomData,
            }
        }

        /// The value, unless the cell is locked.
        pub fn try_lock<'py>(&self, _py: Python<'py>) -> Option<AttachedRef<'_, 'py, T>> {
            let guard = match self.0.try_lock() {
                Ok(guard) => guard,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => return None,
            };
            Some(AttachedRef {
                guard,
                _attached: PhantomData,
            })
        }

        pub fn get_mut(&mut self) -> &mut T {
            self.0
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        }
    }

    impl<T> Deref for AttachedRef<'_, '_, T> {
        type Target = T;

        fn deref(&self) -> &T {
            &self.guard
        }
    }

    impl<T> DerefMut for AttachedRef<'_, '_, T> {
        fn deref_mut(&mut self) -> &mut T {
            &mut self.guard
        }
    }
}
