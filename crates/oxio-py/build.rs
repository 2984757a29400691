//! Sets pyo3's configuration flags for this crate too, `Py_GIL_DISABLED` among them: whether
//! the interpreter built against has a GIL decides how `attached_cell` locks.

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
