//! `loadgen`: an open-loop HTTP/1.1 load generator, in the manner of wrk2, for bench/serve.py's overload test.
//!
//! Why not wrk: wrk is closed-loop. Each of its N connections sends the next request only when the previous
//! one has come back, so when the server slows down the offered rate falls with it (Little's law: rate =
//! N / latency) and "twice the server's capacity" can't be offered at all. Worse, the requests that *would*
//! have been sent during a stall are never timed: coordinated omission, which hides exactly the tail an
//! overload test is about.
//!
//! loadgen sends request i at `start + i / rate` whatever the server does, and measures each latency from
//! that intended send time. When every connection is busy, requests queue in the generator and that wait is
//! counted too (`svc_p99_ms`, timed from the actual send, separates it from the server's own time).
//! One thread, non-blocking sockets and a precise timer keep it cheap, since it shares the cores with the
//! server under test.
//!
//! Output: a summary on stderr, and one line `LOADGEN_JSON {...}` on stdout (fields: see `latency::Report`).

mod generator;
mod latency;
mod options;
mod response;
mod schedule;
mod timer;

use std::process::ExitCode;

use crate::generator::Generator;
use crate::latency::Report;
use crate::options::{Options, USAGE};

fn main() -> ExitCode {
    let opts = match Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("loadgen: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let recorded = match Generator::new(&opts).and_then(Generator::run) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = Report::new(recorded, opts.rate, opts.duration, opts.connections);
    eprint!("{}", report.human());
    println!("LOADGEN_JSON {}", report.json());
    ExitCode::SUCCESS
}
