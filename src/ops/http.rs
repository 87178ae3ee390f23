//! A tiny HTTP/1.1 listener for the operator's endpoints (`GET /metrics`, `GET /healthz`): one request per
//! connection, answered from a route table of closures that render from shared state, then `Connection: close`.
//!
//! It owns only the sockets and their limits: at most [`HttpLimits::max_connections`] at a time (further clients
//! wait in the kernel's accept backlog until a slot frees), a request head of at most
//! [`HttpLimits::max_head_bytes`] that must arrive whole within [`HttpLimits::header_timeout`] (so a client
//! trickling a byte a second is cut off), a bounded time to write the answer, and a backoff after a failed `accept`
//! (EMFILE and the like) instead of a spin. It runs as tasks on the caller's tokio runtime and starts no thread.
//! It must never panic on what a client sends, never block the runtime (handlers must be quick and synchronous),
//! and never hold more than `max_connections` heads in memory.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::log::RateLimiter;

/// Limits of the listener. The defaults suit a Prometheus scrape and a container health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once; more wait in the accept backlog.
    pub max_connections: usize,
    /// The whole request head (request line and headers) must be at most this long.
    pub max_head_bytes: usize,
    /// ... and must have arrived this long after the connection was accepted.
    pub header_timeout: Duration,
    /// Writing the answer may take this long (a client that does not read is dropped).
    pub write_timeout: Duration,
    /// First pause after a failed `accept`; doubles on each further failure.
    pub accept_backoff_min: Duration,
    /// Longest pause after failed `accept`s.
    pub accept_backoff_max: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 64,
            max_head_bytes: 8 << 10,
            header_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            accept_backoff_min: Duration::from_millis(100),
            accept_backoff_max: Duration::from_secs(1),
        }
    }
}

/// An answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type` header.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A `text/plain` answer.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }
}

/// Renders the answer to `GET path`. Called on the runtime's thread: it must be quick and must not block.
pub type Handler = Box<dyn Fn() -> Response + Send + Sync>;

/// The paths served (exact match on the path; a query string is ignored).
#[derive(Default)]
pub struct Routes {
    routes: HashMap<&'static str, Handler>,
}

impl fmt::Debug for Routes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.routes.keys()).finish()
    }
}

impl Routes {
    /// No routes (every path is 404).
    pub fn new() -> Routes {
        Routes::default()
    }

    /// Serves `GET path` with `handler`.
    pub fn get(
        mut self,
        path: &'static str,
        handler: impl Fn() -> Response + Send + Sync + 'static,
    ) -> Routes {
        self.routes.insert(path, Box::new(handler));
        self
    }
}

/// What the listener has done, for tests and for the client's own metrics.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Requests answered (any status).
    pub answered: AtomicU64,
    /// Connections closed for a slow or oversized request head, or a failed write.
    pub cut_off: AtomicU64,
    /// `accept` calls that failed.
    pub accept_errors: AtomicU64,
    /// Connections open now.
    pub active: AtomicUsize,
    /// Most connections open at once.
    pub peak_active: AtomicUsize,
}

/// A bound listener, ready to [`HttpServer::run`].
pub struct HttpServer {
    listener: TcpListener,
    routes: Arc<Routes>,
    limits: HttpLimits,
    stats: Arc<HttpStats>,
}

impl fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpServer")
            .field("local_addr", &self.listener.local_addr().ok())
            .field("routes", &self.routes)
            .field("limits", &self.limits)
            .finish()
    }
}

impl HttpServer {
    /// Binds `addr` (e.g. `127.0.0.1:9464`). A bind error is a configuration error for the caller to report.
    pub async fn bind(
        addr: SocketAddr,
        routes: Routes,
        limits: HttpLimits,
    ) -> io::Result<HttpServer> {
        let listener = TcpListener::bind(addr).await?;
        Ok(HttpServer::from_listener(listener, routes, limits))
    }

    /// Serves on a listener bound elsewhere.
    pub fn from_listener(listener: TcpListener, routes: Routes, limits: HttpLimits) -> HttpServer {
        let limits = HttpLimits {
            max_connections: limits.max_connections.max(1),
            max_head_bytes: limits.max_head_bytes.max(64),
            ..limits
        };
        HttpServer {
            listener,
            routes: Arc::new(routes),
            limits,
            stats: Arc::new(HttpStats::default()),
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Live counters of what it has done.
    pub fn stats(&self) -> Arc<HttpStats> {
        Arc::clone(&self.stats)
    }

    /// Accepts and serves until dropped (spawn it: `tokio::spawn(server.run())`). Dropping the future closes
    /// the listener and every open connection.
    pub async fn run(self) {
        let HttpServer {
            listener,
            routes,
            limits,
            stats,
        } = self;
        let mut connections = JoinSet::new();
        let mut backoff = limits.accept_backoff_min;
        // One warning per kind of failure per minute: an EMFILE storm must not flood the log.
        let mut warnings = RateLimiter::new(Duration::from_secs(60));
        loop {
            let full = connections.len() >= limits.max_connections;
            tokio::select! {
                // Finished connections free their slot (and the JoinSet does not grow).
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                // While full, nobody is accepted: clients wait in the kernel's backlog (bounded by it).
                accepted = listener.accept(), if !full => match accepted {
                    Ok((stream, _peer)) => {
                        backoff = limits.accept_backoff_min;
                        stats.accepted.fetch_add(1, Ordering::Relaxed);
                        let active = stats.active.fetch_add(1, Ordering::Relaxed) + 1;
                        stats.peak_active.fetch_max(active, Ordering::Relaxed);
                        let routes = Arc::clone(&routes);
                        let stats = Arc::clone(&stats);
                        connections.spawn(async move {
                            let _slot = ActiveSlot(&stats);
                            serve_connection(stream, &routes, &limits, &stats).await;
                        });
                    }
                    Err(error) => {
                        stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                        let kind = accept_error_kind(&error);
                        if let Some(suppressed) = warnings.check(kind, std::time::Instant::now()) {
                            log::warn!(
                                "metrics listener: accepting a connection failed ({error}); retrying in {backoff:?}{}",
                                super::log::suppressed_note(suppressed)
                            );
                        }
                        // Not a spin: the error (out of file descriptors, most likely) will not clear at once.
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(limits.accept_backoff_max);
                    }
                },
            }
        }
    }
}

/// Decrements the active count however the connection task ends (even when aborted).
struct ActiveSlot<'a>(&'a HttpStats);

impl Drop for ActiveSlot<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn accept_error_kind(error: &io::Error) -> &'static str {
    use rustix::io::Errno;
    match error.raw_os_error().map(Errno::from_raw_os_error) {
        Some(Errno::MFILE | Errno::NFILE) => "accept: out of file descriptors",
        Some(Errno::NOBUFS | Errno::NOMEM) => "accept: out of memory",
        _ => "accept: other error",
    }
}

/// A parsed request line.
#[derive(Debug, PartialEq, Eq)]
struct Request<'a> {
    method: &'a str,
    path: &'a str,
}

/// Why a request head was refused.
#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    /// Not HTTP/1.x, or not valid text.
    Malformed,
}

/// Where the request head ends in `buf` (the index just past the blank line), if it has arrived.
fn head_end(buf: &[u8]) -> Option<usize> {
    // Bare LF line ends are accepted too, as most servers do.
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn parse_head(head: &[u8]) -> Result<Request<'_>, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Malformed)?;
    let line = text.lines().next().ok_or(HeadError::Malformed)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed);
    };
    let method_ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if !method_ok || !target.starts_with('/') || !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Err(HeadError::Malformed);
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Ok(Request { method, path })
}

/// What a request head gets: the route's answer, 404, 405 or 400.
fn answer(head: &[u8], routes: &Routes) -> (Response, bool) {
    match parse_head(head) {
        Err(HeadError::Malformed) => (Response::text(400, "bad request\n"), false),
        Ok(request) => match routes.routes.get(request.path) {
            None => (Response::text(404, "not found\n"), false),
            Some(_) if request.method != "GET" => {
                (Response::text(405, "method not allowed: use GET\n"), true)
            }
            Some(handler) => (handler(), false),
        },
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn encode_response(response: &Response, allow_get: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        response.status,
        reason_phrase(response.status),
        response.content_type,
        response.body.len()
    )
    .into_bytes();
    if allow_get {
        out.extend_from_slice(b"Allow: GET\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&response.body);
    out
}

async fn serve_connection(
    mut stream: TcpStream,
    routes: &Routes,
    limits: &HttpLimits,
    stats: &HttpStats,
) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; limits.max_head_bytes];
    let read_head = async {
        let mut filled = 0;
        loop {
            if let Some(end) = head_end(&buf[..filled]) {
                return Ok(Some(end));
            }
            if filled == buf.len() {
                return Ok(None);
            }
            let n = stream.read(&mut buf[filled..]).await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            filled += n;
        }
    };
    let (response, allow_get) = match tokio::time::timeout(limits.header_timeout, read_head).await {
        // Slowloris, or a client that connected and never spoke: cut off without a word.
        Err(_elapsed) => {
            stats.cut_off.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Closed or reset before a whole head arrived: nobody to answer.
        Ok(Err(_)) => return,
        Ok(Ok(None)) => {
            stats.cut_off.fetch_add(1, Ordering::Relaxed);
            (Response::text(431, "request head too large\n"), false)
        }
        Ok(Ok(Some(end))) => answer(&buf[..end], routes),
    };
    drop(buf);
    let bytes = encode_response(&response, allow_get);
    let write = async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await?;
        // Read what the client may still send (a body, a pipelined request) until it closes, so the close is a
        // FIN and not a reset that could destroy the answer in flight; bounded in bytes and by the timeout.
        let mut sink = [0u8; 1024];
        let mut drained = 0usize;
        while drained < 64 << 10 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
        Ok::<(), io::Error>(())
    };
    match tokio::time::timeout(limits.write_timeout, write).await {
        Ok(Ok(())) => {
            stats.answered.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Err(_)) | Err(_) => {
            stats.cut_off.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        Routes::new().get("/metrics", || Response::text(200, "m\n"))
    }

    #[test]
    fn finds_the_end_of_a_head_with_crlf_or_lf() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn parses_request_lines_and_refuses_garbage() {
        assert_eq!(
            parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Request {
                method: "GET",
                path: "/metrics"
            })
        );
        for garbage in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"[..],
            b"GET /metrics\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/2.0\r\n\r\n",
            b"get /metrics HTTP/1.1\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"\r\n\r\n",
        ] {
            assert_eq!(
                parse_head(garbage),
                Err(HeadError::Malformed),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn answers_404_405_400_and_the_route() {
        let routes = routes();
        assert_eq!(
            answer(b"GET /metrics HTTP/1.1\r\n\r\n", &routes).0.status,
            200
        );
        assert_eq!(answer(b"GET /nope HTTP/1.1\r\n\r\n", &routes).0.status, 404);
        let (post, allow) = answer(b"POST /metrics HTTP/1.1\r\n\r\n", &routes);
        assert_eq!((post.status, allow), (405, true));
        assert_eq!(answer(b"BLAH\r\n\r\n", &routes).0.status, 400);
    }

    #[test]
    fn responses_carry_length_and_close() {
        let bytes = encode_response(&Response::text(405, "no\n"), true);
        let text = String::from_utf8(bytes).expect("ascii");
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.contains("Allow: GET\r\n"));
        assert!(text.ends_with("\r\n\r\nno\n"));
    }
}
