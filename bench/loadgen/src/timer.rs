//! A wake-up at a precise instant, as a pollable timerfd.
//!
//! epoll's own timeout counts whole milliseconds (mio rounds it up), so at 500 req/s every send would leave
//! up to 1 ms late and the late part would be measured as server latency. A timerfd fires within the kernel's
//! timer slack (~50 us) and wakes the same `poll` as the sockets, so nothing else waits on it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

pub struct DueTimer {
    fd: OwnedFd,
    armed_for: Option<Instant>,
}

impl DueTimer {
    pub fn new(registry: &Registry, token: Token) -> io::Result<Self> {
        // SAFETY: plain syscall; the returned fd is checked and then owned.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        registry.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)?;
        Ok(DueTimer {
            fd,
            armed_for: None,
        })
    }

    /// Fire at `at` (already past: fire at once). Re-arming for the same instant costs nothing.
    pub fn arm(&mut self, at: Instant, now: Instant) -> io::Result<()> {
        if self.armed_for == Some(at) {
            return Ok(());
        }
        // A zero it_value would disarm the timer, so "now" is 1 ns from now.
        let wait = at
            .saturating_duration_since(now)
            .max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: wait.subsec_nanos().into(),
            },
        };
        // SAFETY: the fd is ours and `spec` lives across the call.
        if unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        self.armed_for = Some(at);
        Ok(())
    }

    /// Consume the expiry so the edge-triggered poll reports the next one.
    pub fn fired(&mut self) {
        let mut expirations = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a local buffer; EAGAIN (spurious wake-up) is fine to ignore.
        unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                expirations.as_mut_ptr().cast(),
                expirations.len(),
            )
        };
        self.armed_for = None;
    }
}
