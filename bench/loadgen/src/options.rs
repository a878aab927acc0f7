//! The command line, validated into one `Options`; every error names the option and what it accepts.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

pub const USAGE: &str =
    "usage: loadgen --url http://HOST[:PORT]/PATH --rate R --connections C --duration SECS
               [--body FILE] [--warmup SECS=0] [--content-type TYPE=application/json]
               [--timeout SECS=10] [--method METHOD=POST if --body else GET]

Sends R requests per second at fixed times (request i at start + i/R) over C keep-alive connections,
whatever the server's speed, and times each one from its intended send time.";

#[derive(Debug, Clone)]
pub struct Options {
    pub addr: SocketAddr,
    /// `host[:port]` as given, for the Host header.
    pub authority: String,
    pub path: String,
    pub method: String,
    pub body: Vec<u8>,
    pub content_type: String,
    pub rate: f64,
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub timeout: Duration,
}

impl Options {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
        let mut url = None;
        let mut body_file = None;
        let mut method = None;
        let mut content_type = "application/json".to_string();
        let (mut rate, mut connections, mut duration) = (None, None, None);
        // No warm-up unless asked: bench/serve.py warms the server up itself.
        let mut warmup = Duration::ZERO;
        // 10 s: far beyond any answer a healthy server gives under overload (it refuses at once), short
        // enough that a stuck connection doesn't hold the run.
        let mut timeout = Duration::from_secs(10);

        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            if flag == "-h" || flag == "--help" {
                return Err(String::new());
            }
            let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--url" => url = Some(value()?),
                "--body" => body_file = Some(value()?),
                "--method" => method = Some(value()?.to_ascii_uppercase()),
                "--content-type" => content_type = value()?,
                "--rate" => rate = Some(positive(&flag, &value()?)?),
                "--connections" => {
                    let v = value()?;
                    connections = Some(v.parse::<usize>().ok().filter(|&c| c > 0).ok_or_else(|| {
                        format!("--connections must be a whole number of connections >= 1, got {v:?}")
                    })?);
                }
                "--duration" => duration = Some(seconds(&flag, &value()?, false)?),
                "--warmup" => warmup = seconds(&flag, &value()?, true)?,
                "--timeout" => timeout = seconds(&flag, &value()?, false)?,
                other => return Err(format!("unknown option {other:?}")),
            }
        }

        let url = url.ok_or("--url is required")?;
        let (authority, path) = split_url(&url)?;
        let addr = resolve(&authority)?;
        let body = match &body_file {
            Some(f) => std::fs::read(f).map_err(|e| format!("--body {f:?}: {e}"))?,
            None => Vec::new(),
        };
        let method =
            method.unwrap_or_else(|| if body_file.is_some() { "POST" } else { "GET" }.to_string());
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "--method must be an HTTP method such as GET or POST, got {method:?}"
            ));
        }
        Ok(Options {
            addr,
            authority,
            path,
            method,
            body,
            content_type,
            rate: rate.ok_or("--rate is required (requests per second)")?,
            connections: connections.ok_or("--connections is required")?,
            duration: duration.ok_or("--duration is required (seconds)")?,
            warmup,
            timeout,
        })
    }

    /// The request's bytes, built once and written as-is for every request.
    pub fn request_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: otpserve-loadgen\r\n",
            self.method, self.path, self.authority
        );
        if !self.body.is_empty() || self.method == "POST" || self.method == "PUT" {
            head.push_str(&format!(
                "Content-Type: {}\r\nContent-Length: {}\r\n",
                self.content_type,
                self.body.len()
            ));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

fn positive(flag: &str, v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x > 0.0)
        .ok_or_else(|| format!("{flag} must be a number > 0, got {v:?}"))
}

fn seconds(flag: &str, v: &str, zero_ok: bool) -> Result<Duration, String> {
    let x = v.strip_suffix('s').unwrap_or(v).parse::<f64>().ok();
    x.filter(|x| x.is_finite() && (*x > 0.0 || (zero_ok && *x == 0.0)))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            format!(
                "{flag} must be seconds {} 0 (e.g. 5 or 2.5), got {v:?}",
                if zero_ok { ">=" } else { ">" }
            )
        })
}

/// `http://host[:port][/path]` into (`host:port`, `/path`).
fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--url must start with http:// (no TLS), got {url:?}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("--url has no host: {url:?}"));
    }
    Ok((authority.to_string(), path.to_string()))
}

fn resolve(authority: &str) -> Result<SocketAddr, String> {
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| format!("--url host {authority:?} does not resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("--url host {authority:?} has no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Options, String> {
        Options::parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn minimal_command_line_gets_working_defaults() {
        let o = parse(
            "--url http://127.0.0.1:8190/v2/health/ready --rate 500 --connections 8 --duration 5",
        )
        .unwrap();
        assert_eq!(
            (o.addr.port(), o.path.as_str(), o.method.as_str()),
            (8190, "/v2/health/ready", "GET")
        );
        assert_eq!(
            (o.timeout, o.warmup),
            (Duration::from_secs(10), Duration::ZERO)
        );
        let req = String::from_utf8(o.request_bytes()).unwrap();
        assert_eq!(req, "GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1:8190\r\nUser-Agent: otpserve-loadgen\r\n\r\n");
    }

    #[test]
    fn post_request_carries_its_length_and_type() {
        let mut o =
            parse("--url http://127.0.0.1:1/x --rate 1 --connections 1 --duration 1 --method post")
                .unwrap();
        o.body = b"{}".to_vec();
        let req = String::from_utf8(o.request_bytes()).unwrap();
        assert!(req.starts_with("POST /x HTTP/1.1\r\n"), "{req}");
        assert!(
            req.ends_with("Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"),
            "{req}"
        );
    }

    #[test]
    fn errors_name_the_option_and_what_it_accepts() {
        let base = "--url http://127.0.0.1:1/ --connections 1 --duration 1";
        assert!(parse(&format!("{base} --rate -3"))
            .unwrap_err()
            .contains("--rate must be a number > 0"));
        assert!(parse(&format!("{base} --rate 1 --timeout 0"))
            .unwrap_err()
            .contains("--timeout must be seconds > 0"));
        assert!(
            parse("--url https://x/ --rate 1 --connections 1 --duration 1")
                .unwrap_err()
                .contains("http://")
        );
        assert!(parse(&format!("{base} --rate 1 --bogus 1"))
            .unwrap_err()
            .contains("--bogus"));
        assert!(parse("--url http://127.0.0.1:1/ --rate 1 --duration 1")
            .unwrap_err()
            .contains("--connections"));
    }
}
