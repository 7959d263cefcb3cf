//! A tiny HTTP/1.1 client for the tests, loopback only.
//!
//! NOTE: `jmap-client` 0.4.3 sends every request to the session's URLs as they are, and Cyrus
//! returns them relative (`"apiUrl": "/jmap/"`), so the tests need their own way to reach them.
//! This is it: one request per connection (`Connection: close`), Basic auth, `Content-Length` or
//! chunked bodies, and a `head_only` mode for endpoints that never end (an event stream).
//! [RFC 9112](https://www.rfc-editor.org/rfc/rfc9112).

use std::time::Duration;

use base64::Engine as _;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Per-request deadline (connect, send, read).
const TIMEOUT: Duration = Duration::from_secs(20);

/// A parsed response.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub(crate) status: u16,
    /// Header names lowercased, in order.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// First value of header `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON, or a panic that shows the status and body.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A request. Build with [`Request::get`] / [`Request::post`], then [`Request::send`].
#[derive(Debug, Clone)]
pub(crate) struct Request {
    method: &'static str,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    head_only: bool,
}

impl Request {
    pub(crate) fn get(url: &str) -> Request {
        Request {
            method: "GET",
            url: url.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            head_only: false,
        }
    }

    pub(crate) fn post(url: &str, content_type: &str, body: Vec<u8>) -> Request {
        Request {
            method: "POST",
            url: url.to_string(),
            headers: vec![("Content-Type".to_string(), content_type.to_string())],
            body,
            head_only: false,
        }
    }

    pub(crate) fn basic_auth(self, user: &str, password: &str) -> Request {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.header("Authorization", &format!("Basic {token}"))
    }

    pub(crate) fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Return after the status line and headers (for event streams, which never end).
    pub(crate) fn head_only(mut self) -> Request {
        self.head_only = true;
        self
    }

    /// Send the request; errors are strings with the URL in them.
    pub(crate) async fn send(&self) -> Result<Response, String> {
        tokio::time::timeout(TIMEOUT, self.exchange())
            .await
            .map_err(|_| {
                format!(
                    "{} {}: no response within {TIMEOUT:?}",
                    self.method, self.url
                )
            })?
            .map_err(|e| format!("{} {}: {e}", self.method, self.url))
    }

    async fn exchange(&self) -> Result<Response, String> {
        let (host, port, target) = split_url(&self.url)?;
        let mut stream = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut head = format!(
            "{} {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\nUser-Agent: taskmail-tests\r\n",
            self.method
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if self.method != "GET" || !self.body.is_empty() {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        stream
            .write_all(&self.body)
            .await
            .map_err(|e| format!("write: {e}"))?;

        // status line and headers
        let mut buf = Vec::new();
        let header_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 4096];
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "connection closed before the end of the headers: {:?}",
                    String::from_utf8_lossy(&buf)
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
        let mut rest = buf[header_end + 4..].to_vec();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if self.head_only || status == 204 || status == 304 {
            return Ok(response);
        }

        // body: read to EOF (Connection: close), then decode
        stream
            .read_to_end(&mut rest)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        response.body = if chunked { dechunk(&rest)? } else { rest };
        if let Some(len) = response
            .header("content-length")
            .and_then(|l| l.parse::<usize>().ok())
        {
            response.body.truncate(len);
        }
        Ok(response)
    }
}

/// `http://host:port/path?query` -> (host, port, "/path?query"). Loopback hosts only.
fn split_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// URLs are supported here: {url}"))?;
    let (authority, target) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|e| format!("bad port in {url}: {e}"))?,
        ),
        None => (authority, 80),
    };
    if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
        return Err(format!(
            "the test HTTP client talks to loopback only, not {host}"
        ));
    }
    Ok((host.to_string(), port, target.to_string()))
}

/// Resolve `reference` against `base` (RFC 3986 section 5.2, the cases servers use: absolute
/// URLs, absolute paths, and paths relative to the base's directory).
pub(crate) fn resolve(base: &str, reference: &str) -> String {
    if reference.starts_with("http://") || reference.starts_with("https://") {
        return reference.to_string();
    }
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let origin = &base[..path_start];
    if reference.starts_with('/') {
        return format!("{origin}{reference}");
    }
    let path = base[path_start..].split(['?', '#']).next().unwrap_or("/");
    let dir = path.rfind('/').map_or("/", |i| &path[..=i]);
    format!("{origin}{dir}{reference}")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decode a chunked body (RFC 9112 section 7.1); trailers are ignored.
fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").ok_or("chunked body: missing chunk size line")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|e| format!("chunked body: bad chunk size {size_hex:?}: {e}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            return Err("chunked body: truncated chunk".to_string());
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::{dechunk, resolve};

    #[test]
    fn resolves_relative_session_urls() {
        let base = "http://127.0.0.1:8081/jmap";
        assert_eq!(resolve(base, "/jmap/"), "http://127.0.0.1:8081/jmap/");
        assert_eq!(
            resolve(base, "http://127.0.0.1:8080/jmap/"),
            "http://127.0.0.1:8080/jmap/"
        );
        assert_eq!(
            resolve("http://127.0.0.1:8081/a/b?x", "c"),
            "http://127.0.0.1:8081/a/c"
        );
    }

    #[test]
    fn decodes_chunked_bodies() {
        assert_eq!(
            dechunk(b"4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n").ok(),
            Some(b"Wikipedia".to_vec())
        );
        assert!(dechunk(b"zz\r\n").is_err());
    }
}
