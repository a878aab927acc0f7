//! The event loop: one thread, `--connections` non-blocking keep-alive sockets, one timer.
//!
//! Each turn releases every request whose intended time has come into a FIFO backlog, hands the backlog's
//! head to idle connections (one request in flight per connection, no pipelining), then sleeps in `poll`
//! until a socket is ready or the next request is due. A request that waited in the backlog still has its
//! latency counted from its intended time: that wait is exactly what a closed-loop tool like wrk hides.
//!
//! Connections that fail are reopened at once (after 100 ms if opening itself failed); the request that was
//! in flight on them is counted as an error or a timeout, never dropped silently.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::latency::Recorder;
use crate::options::Options;
use crate::response;
use crate::schedule::Schedule;
use crate::timer::DueTimer;

/// Requests waiting per connection before new ones count as unsent: enough to ride out a pause of the
/// server, small enough that a server that never answers can't make the generator grow without bound.
const BACKLOG_PER_CONNECTION: usize = 100;
/// How often in-flight requests are checked against `--timeout` and failed connections retried.
const HOUSEKEEPING: Duration = Duration::from_millis(10);
/// The shortest sleep between sends: requests due sooner go out together on the next wake-up.
const COALESCE: Duration = Duration::from_micros(200);
/// Wait before reopening a connection whose opening failed (server down: don't spin on ECONNREFUSED).
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
/// How long to wait for the connections to open before the clock starts.
const CONNECT_GRACE: Duration = Duration::from_secs(2);
const TIMER: Token = Token(usize::MAX);
/// The index of the requests that prove each connection before the clock starts: outside the schedule, so
/// never recorded.
const PRIMING: u64 = u64::MAX;

#[derive(Debug)]
struct InFlight {
    index: u64,
    sent_at: Instant,
    written: usize,
}

#[derive(Debug)]
enum State {
    /// No socket; reopen at `retry_at`.
    Down {
        retry_at: Instant,
    },
    Connecting,
    Idle,
    Busy(InFlight),
}

struct Connection {
    stream: Option<TcpStream>,
    state: State,
    /// Bytes received and not yet parsed into a response.
    received: Vec<u8>,
}

enum Failure {
    Error(String),
    Timeout,
}

pub struct Generator<'a> {
    opts: &'a Options,
    poll: Poll,
    timer: DueTimer,
    request: Vec<u8>,
    head_request: bool,
    conns: Vec<Connection>,
    /// Connections that went idle, most recent last; entries are checked on use (a connection may have
    /// closed since).
    idle: Vec<usize>,
    backlog: VecDeque<u64>,
    backlog_cap: usize,
    in_flight: usize,
    schedule: Schedule,
    /// The next request index to release.
    next: u64,
    rec: Recorder,
    scratch: Vec<u8>,
}

impl<'a> Generator<'a> {
    pub fn new(opts: &'a Options) -> io::Result<Self> {
        let poll = Poll::new()?;
        let timer = DueTimer::new(poll.registry(), TIMER)?;
        let now = Instant::now();
        let conns = (0..opts.connections)
            .map(|_| Connection {
                stream: None,
                state: State::Down { retry_at: now },
                received: Vec::new(),
            })
            .collect();
        Ok(Generator {
            opts,
            poll,
            timer,
            request: opts.request_bytes(),
            head_request: opts.method == "HEAD",
            conns,
            idle: Vec::with_capacity(opts.connections),
            backlog: VecDeque::new(),
            backlog_cap: BACKLOG_PER_CONNECTION * opts.connections,
            in_flight: 0,
            schedule: Schedule::new(now, opts.rate, opts.warmup, opts.duration),
            next: 0,
            rec: Recorder::default(),
            scratch: vec![0; 64 * 1024],
        })
    }

    /// Offer the load, drain for at most `--timeout`, and hand back what was recorded.
    pub fn run(mut self) -> io::Result<Recorder> {
        let mut events = Events::with_capacity(1024);
        self.open_connections(&mut events)?;

        self.schedule = Schedule::new(
            Instant::now(),
            self.opts.rate,
            self.opts.warmup,
            self.opts.duration,
        );
        self.rec.scheduled = self.schedule.measured();
        let drain_deadline = self.schedule.end() + self.opts.timeout;
        let mut next_housekeeping = self.schedule.start + HOUSEKEEPING;
        loop {
            let now = Instant::now();
            self.release_due(now);
            self.dispatch(now);
            if now >= next_housekeeping {
                self.housekeeping(now);
                next_housekeeping = now + HOUSEKEEPING;
            }
            let done = self.next == self.schedule.total()
                && self.backlog.is_empty()
                && self.in_flight == 0;
            if done || now >= drain_deadline {
                break;
            }
            if self.next < self.schedule.total() {
                // Wake no more often than every COALESCE: at tens of thousands of requests a second a
                // wake-up per request (arm, poll, read the timer) cost more CPU than the sends themselves,
                // CPU the server under test shares. A request sent up to COALESCE late still has its
                // latency counted from its intended time.
                let at = self.schedule.intended(self.next).max(now + COALESCE);
                self.timer.arm(at, now)?;
            }
            let wait = next_housekeeping
                .min(drain_deadline)
                .saturating_duration_since(now);
            self.poll_once(&mut events, wait)?;
        }
        self.stop();
        Ok(self.rec)
    }

    /// Open every connection before the clock starts, so the first requests don't pay for the handshakes.
    fn open_connections(&mut self, events: &mut Events) -> io::Result<()> {
        let now = Instant::now();
        for c in 0..self.conns.len() {
            self.connect(c, now);
        }
        let deadline = now + CONNECT_GRACE;
        while self
            .conns
            .iter()
            .any(|c| matches!(c.state, State::Connecting))
        {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            self.poll_once(events, deadline - now)?;
        }
        // Then one request on each, answered before the clock starts. The client sees a connection open
        // while the server's accept queue may still be full and drop its packets; its first request would
        // then wait for TCP retransmits (seconds) and put the handshake's delay into the measured tail.
        let now = Instant::now();
        while let Some(c) = self.pop_idle() {
            self.send(c, PRIMING, now);
        }
        let deadline = now + self.opts.timeout;
        loop {
            let now = Instant::now();
            if self.in_flight == 0 || now >= deadline {
                return Ok(());
            }
            self.poll_once(events, (deadline - now).min(HOUSEKEEPING))?;
            self.housekeeping(Instant::now());
        }
    }

    fn poll_once(&mut self, events: &mut Events, wait: Duration) -> io::Result<()> {
        match self.poll.poll(events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            if event.token() == TIMER {
                self.timer.fired();
            } else {
                self.on_event(event.token().0, event);
            }
        }
        Ok(())
    }

    /// Move every request that is due into the backlog, or count it unsent if the backlog is full.
    fn release_due(&mut self, now: Instant) {
        while self.next < self.schedule.total() && self.schedule.intended(self.next) <= now {
            if self.backlog.len() < self.backlog_cap {
                self.backlog.push_back(self.next);
                self.rec.backlog_max = self.rec.backlog_max.max(self.backlog.len());
            } else if self.schedule.is_recorded(self.next) {
                self.rec.unsent += 1;
            }
            self.next += 1;
        }
    }

    fn dispatch(&mut self, now: Instant) {
        while !self.backlog.is_empty() {
            let Some(c) = self.pop_idle() else { return };
            let index = self.backlog.pop_front().expect("backlog checked non-empty");
            self.send(c, index, now);
        }
    }

    fn send(&mut self, c: usize, index: u64, now: Instant) {
        self.conns[c].state = State::Busy(InFlight {
            index,
            sent_at: now,
            written: 0,
        });
        self.in_flight += 1;
        if self.schedule.is_recorded(index) {
            self.rec.sent += 1;
        }
        self.write(c, now);
    }

    fn pop_idle(&mut self) -> Option<usize> {
        while let Some(c) = self.idle.pop() {
            if matches!(self.conns[c].state, State::Idle) {
                return Some(c);
            }
        }
        None
    }

    fn on_event(&mut self, c: usize, event: &Event) {
        let now = Instant::now();
        if matches!(self.conns[c].state, State::Connecting) && !self.finish_connect(c, now) {
            return;
        }
        if event.is_writable() {
            self.write(c, now);
            if matches!(self.conns[c].state, State::Connecting) {
                return; // the write failed and the connection is being reopened: the event was the old one's
            }
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.read(c, now, event.is_read_closed() || event.is_error());
        }
    }

    /// Whether the connection is now open; a failed one is closed and retried later.
    fn finish_connect(&mut self, c: usize, now: Instant) -> bool {
        let Some(stream) = &self.conns[c].stream else {
            return false;
        };
        let failed = match stream.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match stream.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return false, // still opening
                Err(e) => Some(e),
            },
        };
        if let Some(e) = failed {
            self.rec.connect_errors += 1;
            self.rec.last_error = Some(format!("connect to {}: {e}", self.opts.addr));
            self.close(c, now, true);
            return false;
        }
        self.conns[c].state = State::Idle;
        self.idle.push(c);
        true
    }

    fn write(&mut self, c: usize, now: Instant) {
        let conn = &mut self.conns[c];
        let (Some(stream), State::Busy(f)) = (&mut conn.stream, &mut conn.state) else {
            return;
        };
        while f.written < self.request.len() {
            match stream.write(&self.request[f.written..]) {
                Ok(n) => f.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(c, Failure::Error(format!("write: {e}")), now),
            }
        }
    }

    /// `to_end`: the peer has closed or failed, so read until EOF rather than stopping at a short read.
    fn read(&mut self, c: usize, now: Instant, to_end: bool) {
        let conn = &mut self.conns[c];
        let Some(stream) = &mut conn.stream else {
            return;
        };
        let mut closed = None;
        loop {
            match stream.read(&mut self.scratch) {
                Ok(0) => {
                    closed = Some("connection closed by the server".to_string());
                    break;
                }
                Ok(n) => {
                    conn.received.extend_from_slice(&self.scratch[..n]);
                    // A short read emptied the socket, and bytes arriving later raise a new edge: skip the
                    // read that would only say WouldBlock (a syscall per response), as tokio does.
                    if n < self.scratch.len() && !to_end {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    closed = Some(format!("read: {e}"));
                    break;
                }
            }
        }

        if !conn.received.is_empty() {
            match (
                &conn.state,
                response::parse(&conn.received, self.head_request),
            ) {
                (State::Busy(_), Ok(None)) => {}
                (State::Busy(f), Ok(Some(r))) => {
                    let (index, sent_at, written) = (f.index, f.sent_at, f.written);
                    conn.received.drain(..r.consumed);
                    conn.state = State::Idle;
                    self.in_flight -= 1;
                    if self.schedule.is_recorded(index) {
                        self.rec.record(
                            r.status,
                            now - self.schedule.intended(index),
                            now - sent_at,
                        );
                    }
                    // Extra bytes would be a response to nothing (we never pipeline): don't trust the stream.
                    let reusable = !r.close
                        && written == self.request.len()
                        && self.conns[c].received.is_empty();
                    if !reusable || closed.is_some() {
                        return self.close(c, now, false);
                    }
                    self.idle.push(c);
                }
                (_, Err(e)) => {
                    return self.fail(c, Failure::Error(format!("bad response: {e}")), now)
                }
                (_, Ok(_)) => {
                    return self.fail(c, Failure::Error("response without a request".into()), now)
                }
            }
        }
        if let Some(why) = closed {
            // On an idle connection this is the server closing a keep-alive connection: reopen quietly.
            self.fail(c, Failure::Error(why), now);
        }
    }

    /// Count the in-flight request (if any) as failed, then reopen the connection.
    fn fail(&mut self, c: usize, failure: Failure, now: Instant) {
        if let State::Busy(f) = &self.conns[c].state {
            self.in_flight -= 1;
            let recorded = self.schedule.is_recorded(f.index);
            match failure {
                Failure::Timeout if recorded => self.rec.timeouts += 1,
                Failure::Error(why) if recorded => {
                    self.rec.errors += 1;
                    self.rec.last_error = Some(why);
                }
                _ => {}
            }
        }
        self.close(c, now, false);
    }

    /// Drop the socket (the caller has settled any in-flight request) and open a new one.
    fn close(&mut self, c: usize, now: Instant, backoff: bool) {
        let conn = &mut self.conns[c];
        if let Some(mut stream) = conn.stream.take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        conn.received.clear();
        if backoff {
            conn.state = State::Down {
                retry_at: now + RECONNECT_BACKOFF,
            };
        } else {
            self.connect(c, now);
        }
    }

    fn connect(&mut self, c: usize, now: Instant) {
        let opened = TcpStream::connect(self.opts.addr).and_then(|mut stream| {
            stream.set_nodelay(true)?;
            self.poll.registry().register(
                &mut stream,
                Token(c),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        let conn = &mut self.conns[c];
        match opened {
            Ok(stream) => {
                conn.stream = Some(stream);
                conn.state = State::Connecting;
            }
            Err(e) => {
                conn.state = State::Down {
                    retry_at: now + RECONNECT_BACKOFF,
                };
                self.rec.connect_errors += 1;
                self.rec.last_error = Some(format!("connect to {}: {e}", self.opts.addr));
            }
        }
    }

    /// Time out requests in flight for longer than `--timeout`; reopen connections whose backoff has passed.
    fn housekeeping(&mut self, now: Instant) {
        for c in 0..self.conns.len() {
            match &self.conns[c].state {
                State::Busy(f) if now.duration_since(f.sent_at) >= self.opts.timeout => {
                    self.fail(c, Failure::Timeout, now);
                }
                State::Down { retry_at } if *retry_at <= now => self.connect(c, now),
                _ => {}
            }
        }
    }

    /// The drain is over: what is still queued was never sent, what is still in flight timed out.
    fn stop(&mut self) {
        let recorded = |i: &u64| self.schedule.is_recorded(*i);
        self.rec.unsent += self.backlog.iter().filter(|i| recorded(i)).count() as u64;
        // Requests never released (the drain deadline came first, only possible if the loop fell far behind).
        self.rec.unsent += (self.next..self.schedule.total())
            .filter(|i| recorded(i))
            .count() as u64;
        for conn in &self.conns {
            if let State::Busy(f) = &conn.state {
                if recorded(&f.index) {
                    self.rec.timeouts += 1;
                }
            }
        }
        debug_assert_eq!(
            self.rec.sent,
            self.rec.completed + self.rec.errors + self.rec.timeouts
        );
        debug_assert_eq!(self.rec.scheduled, self.rec.sent + self.rec.unsent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// A server on a thread: for each request on each connection, `answer(n)` gives the bytes to send back
    /// (the n-th request overall), or `None` to drop the connection without answering.
    fn serve(answer: fn(usize) -> Option<&'static [u8]>) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        thread::spawn(move || {
            for stream in listener.incoming() {
                let (mut stream, served) = (stream.unwrap(), served.clone());
                thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let n = served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            match answer(n) {
                                Some(bytes) => stream.write_all(bytes).unwrap(),
                                None => return,
                            }
                        }
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                });
            }
        });
        addr
    }

    fn run(addr: std::net::SocketAddr, rate: u32, connections: u32) -> Recorder {
        let args = format!("--url http://{addr}/x --rate {rate} --connections {connections} --duration 0.5 --timeout 1");
        let opts = Options::parse(args.split_whitespace().map(String::from)).unwrap();
        Generator::new(&opts).unwrap().run().unwrap()
    }

    fn check_books_balance(rec: &Recorder) {
        assert_eq!(
            rec.sent,
            rec.completed + rec.errors + rec.timeouts,
            "{rec:?}"
        );
        assert_eq!(rec.scheduled, rec.sent + rec.unsent, "{rec:?}");
    }

    #[test]
    fn every_scheduled_request_is_answered_on_keep_alive_connections() {
        let addr = serve(|_| Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
        let rec = run(addr, 400, 4);
        check_books_balance(&rec);
        assert_eq!((rec.scheduled, rec.completed, rec.errors), (200, 200, 0));
        assert_eq!(rec.by_status[&200].from_intended_us.len(), 200);
    }

    #[test]
    fn connection_close_and_chunked_responses_are_followed() {
        let addr = serve(|n| {
            Some(if n % 2 == 0 {
                b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 0\r\n\r\n" as &[u8]
            } else {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
            })
        });
        let rec = run(addr, 200, 2);
        check_books_balance(&rec);
        assert_eq!((rec.completed, rec.errors), (100, 0), "{rec:?}");
        assert!(rec.by_status.contains_key(&200) && rec.by_status.contains_key(&503));
    }

    #[test]
    fn a_request_lost_with_its_connection_is_an_error_not_dropped() {
        // Every third request: the server hangs up instead of answering.
        let addr = serve(|n| {
            (n % 3 != 0).then_some(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" as &[u8])
        });
        let rec = run(addr, 200, 2);
        check_books_balance(&rec);
        assert_eq!(rec.completed + rec.errors, 100, "{rec:?}");
        assert!(rec.errors > 20, "{rec:?}");
    }
}
