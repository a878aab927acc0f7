//! The kernel's own rayon pool and its size (`set_num_threads` / `get_num_threads`).
//!
//! A private pool rather than rayon's global one, so that the thread count can be changed at any
//! time and the kernel never competes with whatever else in the process uses the global pool.

use std::sync::{Arc, OnceLock, RwLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

static POOL: OnceLock<RwLock<Arc<ThreadPool>>> = OnceLock::new();

/// The default: one thread per core the OS lets this process use.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn build(threads: usize) -> Result<Arc<ThreadPool>, String> {
    ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("otpserve-kernel-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| format!("could not start {threads} kernel threads: {e}"))
}

fn cell() -> &'static RwLock<Arc<ThreadPool>> {
    POOL.get_or_init(|| {
        let pool = build(default_threads())
            .or_else(|_| build(1))
            .expect("a one-thread rayon pool can always be built");
        RwLock::new(pool)
    })
}

/// The pool that large computations run on (a cheap `Arc` clone).
pub fn pool() -> Arc<ThreadPool> {
    match cell().read() {
        Ok(guard) => Arc::clone(&guard),
        Err(poisoned) => Arc::clone(&poisoned.into_inner()),
    }
}

pub fn num_threads() -> usize {
    pool().current_num_threads()
}

/// Replace the pool with one of `threads` threads; computations already running finish on the old one.
pub fn set_num_threads(threads: usize) -> Result<(), String> {
    if threads == 0 {
        return Err("the thread count must be at least 1, got 0".to_string());
    }
    let new = build(threads)?;
    match cell().write() {
        Ok(mut guard) => *guard = new,
        Err(poisoned) => *poisoned.into_inner() = new,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_count_can_be_changed_and_zero_is_refused() {
        set_num_threads(3).unwrap();
        assert_eq!(num_threads(), 3);
        assert!(set_num_threads(0).is_err());
        assert_eq!(num_threads(), 3);
        set_num_threads(default_threads()).unwrap();
    }
}
