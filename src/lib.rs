//! otpserve's native kernel (`otpserve._kernel`): layer 1 of DESIGN.md.
//!
//! Plain Rust compute modules on slices, each with its own tests, and one binding module (`python`)
//! that turns them into Python functions.

pub mod dense;
pub mod element;
pub mod http1;
pub mod matmul;
#[cfg(target_arch = "x86_64")]
mod packed_x86;
pub mod rowwise;
pub mod small_batch;
#[cfg(target_arch = "x86_64")]
mod small_batch_x86;
pub mod threads;
pub mod v2json;

mod python;

use pyo3::prelude::*;

#[pymodule]
fn _kernel(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    python::register(m)?;
    http1::register(m)
}
