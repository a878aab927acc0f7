//! The fast path of the HTTP face: one call that recognises a whole, ordinary HTTP/1.x request.
//!
//! The Python server parses with httptools, which calls back into Python for the start of a message,
//! the URL, every header, the body and the end: eight or more calls a request, and under overload most
//! of what a refusal costs. Nearly every request a client sends arrives whole in one read and has the
//! plainest shape (a Content-Length body, no chunking, no upgrade), so `parse_whole` takes exactly that
//! shape in one call (httparse, the parser hyper uses) and returns `None` for anything else: a partial
//! request, a second request behind the first, chunked bodies, upgrades, repeated or odd Content-Length,
//! anything malformed. The caller then hands the bytes to httptools as before, which owns every error
//! message, so the fast path changes no answer, only what a common one costs.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Headers a request may carry before the fast path declines it (httptools then takes it).
const MAX_HEADERS: usize = 32;

/// One request that arrived whole: its parts are slices of the buffer it came in.
#[derive(Debug, PartialEq, Eq)]
pub struct Whole<'a> {
    pub method: &'a [u8],
    pub path: &'a [u8],
    pub query: &'a [u8],
    pub keep_alive: bool,
    pub body: &'a [u8],
    /// `Inference-Header-Content-Length` (the KServe v2 binary extension), when sent.
    pub inference_header_length: Option<&'a [u8]>,
    /// `X-Request-Timeout` (a per-request deadline in seconds), when sent.
    pub timeout: Option<&'a [u8]>,
}

/// `buf` as exactly one whole request of the ordinary shape, or `None` (the slow path decides).
pub fn parse_whole(buf: &[u8], max_head: usize, max_body: usize) -> Option<Whole<'_>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= max_head => n,
        _ => return None,
    };
    let (method, target, version) = (req.method?, req.path?, req.version?);
    if !target.starts_with('/') {
        return None; // absolute-form and asterisk-form targets: rare, let httptools judge them
    }
    // httparse is laxer than llhttp in three ways a client can reach: lines ended by a bare LF, methods
    // llhttp does not know (or in lower case), bytes over 0x7f in the target. httptools answers all three
    // 400; the same bytes must not be served when they happen to arrive in one read. A bare LF matters
    // most: a proxy that ends lines only at CRLF reads `X: a\nContent-Length: 5` as one header, so the
    // two would disagree on where a request ends (request smuggling).
    if !KNOWN_METHODS.contains(&method) || !target.is_ascii() || has_bare_lf(&buf[..head_len]) {
        return None;
    }
    let mut content_length: Option<usize> = None;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut inference_header_length = None;
    let mut timeout = None;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return None;
            }
            content_length = Some(decimal(h.value)?);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&c| c == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    connection_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    connection_keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return None;
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return None;
        } else if name.eq_ignore_ascii_case(b"inference-header-content-length") {
            inference_header_length = Some(h.value);
        } else if name.eq_ignore_ascii_case(b"x-request-timeout") {
            timeout = Some(h.value);
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > max_body || buf.len() != head_len.checked_add(body_len)? {
        return None; // over the limit (413), short (more to come) or followed by more requests
    }
    let keep_alive = match version {
        1 => !connection_close,
        _ => connection_keep_alive && !connection_close,
    };
    let target = target.as_bytes();
    let (path, query) = match target.iter().position(|&c| c == b'?') {
        Some(q) => (&target[..q], &target[q + 1..]),
        None => (target, &target[target.len()..]),
    };
    Some(Whole {
        method: method.as_bytes(),
        path,
        query,
        keep_alive,
        body: &buf[head_len..],
        inference_header_length,
        timeout,
    })
}

/// Methods the fast path takes (all known to llhttp); any other goes to httptools, which judges it.
const KNOWN_METHODS: [&str; 7] = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"];

/// Whether a line of the head ends in LF without CR before it (llhttp refuses those; httparse takes them).
fn has_bare_lf(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, &c)| c == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

/// A Content-Length value: ASCII digits only (no sign, no spaces inside), at most 15 of them.
fn decimal(value: &[u8]) -> Option<usize> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 15 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        value
            .iter()
            .fold(0usize, |n, &c| n * 10 + usize::from(c - b'0')),
    )
}

type WholeTuple<'py> = (
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    bool,
    Bound<'py, PyBytes>,
    Option<Bound<'py, PyBytes>>,
    Option<Bound<'py, PyBytes>>,
);

/// `(method, path, query, keep_alive, body, inference_header_length, timeout)` when `data` is exactly one
/// whole request of the ordinary shape, else None (hand `data` to the full parser).
#[pyfunction]
fn http_parse_whole<'py>(
    py: Python<'py>,
    data: &[u8],
    max_head: usize,
    max_body: usize,
) -> Option<WholeTuple<'py>> {
    let w = parse_whole(data, max_head, max_body)?;
    Some((
        PyBytes::new(py, w.method),
        PyBytes::new(py, w.path),
        PyBytes::new(py, w.query),
        w.keep_alive,
        PyBytes::new(py, w.body),
        w.inference_header_length.map(|v| PyBytes::new(py, v)),
        w.timeout.map(|v| PyBytes::new(py, v)),
    ))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(http_parse_whole, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(buf: &[u8]) -> Option<Whole<'_>> {
        parse_whole(buf, 64 * 1024, 1024)
    }

    #[test]
    fn an_ordinary_post_is_taken_whole_with_its_body_and_the_headers_we_read() {
        let buf = b"POST /v2/models/mlp/infer?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\
                    X-Request-Timeout: 0.5\r\nInference-Header-Content-Length: 2\r\n\r\nabcd";
        let w = whole(buf).expect("taken");
        assert_eq!(w.method, b"POST");
        assert_eq!(w.path, b"/v2/models/mlp/infer");
        assert_eq!(w.query, b"x=1");
        assert!(w.keep_alive);
        assert_eq!(w.body, b"abcd");
        assert_eq!(w.timeout, Some(&b"0.5"[..]));
        assert_eq!(w.inference_header_length, Some(&b"2"[..]));
    }

    #[test]
    fn keep_alive_follows_the_version_and_the_connection_header() {
        let ka = |b: &[u8]| whole(b).map(|w| w.keep_alive);
        assert_eq!(ka(b"GET / HTTP/1.1\r\n\r\n"), Some(true));
        assert_eq!(
            ka(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"),
            Some(false)
        );
        assert_eq!(ka(b"GET / HTTP/1.0\r\n\r\n"), Some(false));
        assert_eq!(
            ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"),
            Some(true)
        );
    }

    #[test]
    fn anything_but_exactly_one_whole_ordinary_request_is_declined() {
        let declined: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab", // body still coming
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nabGET / HTTP/1.1\r\n\r\n", // pipelined
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\n",       // head still coming
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 2000\r\n\r\n", // over max_body: 413 is the slow path's
            b"GET http://a/ HTTP/1.1\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"G ET / HTTP/1.1\r\n\r\n",
            b"\x00\x01\x02",
            b"",
            // what llhttp refuses must not be taken here (same bytes, same answer, however they arrive)
            b"GET / HTTP/1.1\n\n",
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
            b"POST / HTTP/1.1\r\nX: a\nContent-Length: 2\r\n\r\nab", // smuggling shape
            b"get / HTTP/1.1\r\n\r\n",
            b"FOO / HTTP/1.1\r\n\r\n",
            b"CONNECT / HTTP/1.1\r\n\r\n",
            b"PRI / HTTP/1.1\r\n\r\n",
            b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n",
        ];
        for buf in declined {
            assert_eq!(whole(buf), None, "{:?}", String::from_utf8_lossy(buf));
        }
    }

    #[test]
    fn a_head_over_the_limit_is_declined() {
        let mut buf = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        buf.extend(std::iter::repeat_n(b'a', 100));
        buf.extend(b"\r\n\r\n");
        assert!(parse_whole(&buf, 1000, 0).is_some());
        assert!(parse_whole(&buf, 50, 0).is_none());
    }
}
