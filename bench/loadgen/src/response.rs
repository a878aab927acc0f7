//! An HTTP/1.1 response parser over a connection's receive buffer.
//!
//! The generator appends whatever a read returned and asks `parse` whether a whole response is there yet; a
//! response may arrive in several reads, and one read may hold more than one response. `parse` never copies:
//! it reports the status, how many bytes the response took (so the caller drains exactly those) and whether
//! the server will close the connection after it. Bodies are skipped, not kept: only their length matters.

use std::fmt;

/// One complete response at the front of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Bytes of the buffer this response took, head and body.
    pub consumed: usize,
    /// `Connection: close`, or HTTP/1.0 without `Connection: keep-alive`: reconnect after this response.
    pub close: bool,
}

/// The bytes are not an HTTP response this parser can frame; the connection cannot be reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A response head larger than this is treated as garbage rather than waited for.
const MAX_HEAD: usize = 64 * 1024;

/// `Ok(None)`: not all of the response has arrived yet. `head_request`: the request was HEAD, so there is no body.
pub fn parse(buf: &[u8], head_request: bool) -> Result<Option<Response>, ParseError> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(ParseError(format!(
                "response head longer than {MAX_HEAD} bytes"
            )));
        }
        // A status line can be judged before the head is complete: fail fast on garbage.
        if let Some(line_end) = find(buf, b"\r\n") {
            status_line(&buf[..line_end])?;
        }
        return Ok(None);
    };
    let head = &buf[..head_end];
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let (http10, status) = status_line(lines.next().unwrap_or_default())?;

    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut close = http10;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(ParseError(format!(
                "header line without a colon: {:?}",
                lossy(line)
            )));
        };
        let name = &line[..colon];
        let value = trim(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            content_length =
                Some(n.ok_or_else(|| {
                    ParseError(format!("bad Content-Length: {:?}", lossy(value)))
                })?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = has_token(value, b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            if has_token(value, b"close") {
                close = true;
            } else if has_token(value, b"keep-alive") {
                close = false;
            }
        }
    }

    let body_start = head_end + 4;
    let no_body = head_request || status / 100 == 1 || status == 204 || status == 304;
    let body_len = if no_body {
        Some(0)
    } else if chunked {
        chunked_length(&buf[body_start..])?
    } else if let Some(n) = content_length {
        (buf.len() - body_start >= n).then_some(n)
    } else {
        // Body until the server closes: it can't be told apart from a reset here, so refuse it plainly.
        return Err(ParseError(format!(
            "status {status} without Content-Length or chunked encoding (read-until-close bodies are unsupported)"
        )));
    };
    Ok(body_len.map(|n| Response {
        status,
        consumed: body_start + n,
        close,
    }))
}

/// `(is HTTP/1.0, status)` from `HTTP/1.x SSS reason`.
fn status_line(line: &[u8]) -> Result<(bool, u16), ParseError> {
    let bad = || ParseError(format!("bad status line: {:?}", lossy(line)));
    let http10 = match line.get(..9) {
        Some(b"HTTP/1.1 ") => false,
        Some(b"HTTP/1.0 ") => true,
        _ => return Err(bad()),
    };
    let code = line.get(9..12).ok_or_else(bad)?;
    if !code.iter().all(u8::is_ascii_digit) || line.get(12).is_some_and(|&b| b != b' ') {
        return Err(bad());
    }
    let status = code
        .iter()
        .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    Ok((http10, status))
}

/// Length of a complete chunked body (chunks, last chunk, trailers), or `None` if it hasn't all arrived.
fn chunked_length(body: &[u8]) -> Result<Option<usize>, ParseError> {
    let mut at = 0;
    loop {
        let Some(line_len) = find(&body[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = &body[at..at + line_len];
        let digits = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(trim(digits))
            .ok()
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or_else(|| ParseError(format!("bad chunk size line: {:?}", lossy(line))))?;
        at += line_len + 2;
        if size == 0 {
            // Trailer lines, then an empty line.
            loop {
                let Some(n) = find(&body[at..], b"\r\n") else {
                    return Ok(None);
                };
                at += n + 2;
                if n == 0 {
                    return Ok(Some(at));
                }
            }
        }
        if body.len() < at + size + 2 {
            return Ok(None);
        }
        if &body[at + size..at + size + 2] != b"\r\n" {
            return Err(ParseError("chunk data not followed by CRLF".into()));
        }
        at += size + 2;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

fn lossy(s: &[u8]) -> String {
    String::from_utf8_lossy(&s[..s.len().min(80)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhello";

    #[test]
    fn whole_response_is_parsed_with_its_length() {
        let r = parse(OK, false).unwrap().unwrap();
        assert_eq!(
            r,
            Response {
                status: 200,
                consumed: OK.len(),
                close: false
            }
        );
    }

    #[test]
    fn response_split_at_every_byte_is_incomplete_until_the_last() {
        for cut in 0..OK.len() {
            assert_eq!(parse(&OK[..cut], false).unwrap(), None, "cut at {cut}");
        }
        assert!(parse(OK, false).unwrap().is_some());
    }

    #[test]
    fn two_responses_in_one_buffer_are_parsed_one_after_the_other() {
        let busy =
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\ncontent-length: 2\r\n\r\n{}";
        let mut buf = OK.to_vec();
        buf.extend_from_slice(busy);
        let first = parse(&buf, false).unwrap().unwrap();
        assert_eq!((first.status, first.consumed), (200, OK.len()));
        let second = parse(&buf[first.consumed..], false).unwrap().unwrap();
        assert_eq!((second.status, second.consumed), (503, busy.len()));
    }

    #[test]
    fn connection_close_is_reported() {
        let r = parse(
            b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(r.unwrap().unwrap().close);
    }

    #[test]
    fn http10_closes_unless_keep_alive() {
        let plain = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(plain.close);
        let kept = parse(
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(!kept.unwrap().unwrap().close);
    }

    #[test]
    fn bad_status_line_is_an_error_before_the_head_completes() {
        assert!(parse(b"HTTP/2 200\r\n", false).is_err());
        assert!(parse(b"garbage\r\n\r\n", false).is_err());
        assert!(parse(b"HTTP/1.1 2x0 OK\r\n\r\n", false).is_err());
    }

    #[test]
    fn chunked_body_is_framed_including_trailers() {
        let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\n";
        for cut in 0..resp.len() {
            assert_eq!(parse(&resp[..cut], false).unwrap(), None, "cut at {cut}");
        }
        let r = parse(resp, false).unwrap().unwrap();
        assert_eq!((r.status, r.consumed), (200, resp.len()));
    }

    #[test]
    fn no_body_statuses_and_head_need_no_length() {
        assert_eq!(
            parse(b"HTTP/1.1 204 No Content\r\n\r\n", false)
                .unwrap()
                .unwrap()
                .consumed,
            27
        );
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n";
        assert_eq!(parse(head, true).unwrap().unwrap().consumed, head.len());
    }

    #[test]
    fn body_without_framing_is_an_error_that_says_so() {
        let err = parse(b"HTTP/1.1 200 OK\r\n\r\nxyz", false).unwrap_err();
        assert!(err.0.contains("without Content-Length"), "{err}");
    }
}
