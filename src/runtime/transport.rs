//! The socket: opening a WebSocket to the facilitator (TCP, TLS for `wss://`, handshake with the validator
//! headers) and moving frames in and out of it without ever losing or splitting one.
//!
//! Cancel safety is the point of this module. The loop's `select!` polls [`Socket::poll`] through a `poll_fn`,
//! which may be dropped whenever another branch wins. That is safe because the poll function keeps no state of its
//! own: outgoing messages wait in [`Socket`]'s own queue and leave it only in the same synchronous step as
//! `start_send`, which hands the whole frame to tungstenite's write buffer; from there flushing writes it out
//! across as many polls as it takes, keeping partial progress in that buffer. So a message is either still queued
//! here or entirely in tungstenite's buffer; dropping the poll future loses neither.
//!
//! [`Socket::poll`] is the one place that decides the order of reading and writing: a large backlog is written
//! before anything more is read (a facilitator that never pauses must not starve our answers and Pings); otherwise
//! what can be read is read, in batches; and only when nothing is left to read is the queue flushed, so a burst of
//! statuses goes out in one write instead of one system call each.
//! Nothing here reads the clock or decides anything about the protocol: timeouts are the machine's.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::{Sink, Stream};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// The open WebSocket.
pub(crate) type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

type Connecting = Pin<Box<dyn Future<Output = Result<WsStream, String>> + Send>>;

/// Limits of the WebSocket layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportLimits {
    /// Largest message accepted (bigger ones fail the connection).
    pub max_message_size: usize,
    /// Largest frame accepted.
    pub max_frame_size: usize,
    /// Bytes buffered before a write goes to the socket.
    pub write_buffer_size: usize,
    /// Bytes asked of the socket per read. tungstenite zero-fills that much of its buffer before every read, so
    /// this is kept small (its default, 128 KiB, cost more per job than everything but the signature check);
    /// larger frames still arrive whole, over several reads.
    pub read_buffer_size: usize,
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            max_message_size: 16 << 20,
            max_frame_size: 16 << 20,
            write_buffer_size: 128 << 10,
            read_buffer_size: 8 << 10,
        }
    }
}

impl TransportLimits {
    fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_frame_size))
            .write_buffer_size(self.write_buffer_size)
            .read_buffer_size(self.read_buffer_size)
    }
}

/// The validated facilitator address and the handshake request built from it.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    url: String,
    runner_version: String,
    validator_version: String,
    /// TLS settings for `wss://` when they differ from the default (the public web roots).
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Why a `--ca-file` cannot be used. A configuration error: the program exits 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaFileError {
    /// The file cannot be read.
    #[error("cannot read the CA file {path}: {problem}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        problem: String,
    },
    /// The file is not PEM, or a certificate in it is damaged.
    #[error(
        "the CA file {path} is malformed: {problem} (expected PEM `-----BEGIN CERTIFICATE-----` blocks)"
    )]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The file holds no certificate.
    #[error(
        "the CA file {path} holds no certificate (expected PEM `-----BEGIN CERTIFICATE-----` blocks)"
    )]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
}

/// A TLS client configuration that trusts the public web roots (as without `--ca-file`) plus every certificate
/// in the PEM file at `path` (a private CA, e.g. a staging or self-hosted facilitator's).
pub(crate) fn tls_config_with_ca_file(
    path: &Path,
) -> Result<Arc<rustls::ClientConfig>, CaFileError> {
    let pem = std::fs::read(path).map_err(|e| CaFileError::Unreadable {
        path: path.to_owned(),
        problem: e.to_string(),
    })?;
    let malformed = |problem: String| CaFileError::Malformed {
        path: path.to_owned(),
        problem,
    };
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed(e.to_string()))?;
    if certificates.is_empty() {
        return Err(CaFileError::NoCertificate {
            path: path.to_owned(),
        });
    }
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for (index, certificate) in certificates.into_iter().enumerate() {
        roots
            .add(certificate)
            .map_err(|e| malformed(format!("certificate {} is not usable: {e}", index + 1)))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| malformed(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Why a URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid facilitator URL {url:?}: {problem} (expected e.g. wss://facilitator.computehorde.io/ws/v0/)"
)]
pub struct UrlError {
    /// The URL given.
    pub url: String,
    /// What is wrong with it.
    pub problem: String,
}

impl Endpoint {
    /// Checks the URL (scheme `ws` or `wss`, a host) and keeps the header values to send.
    pub(crate) fn new(
        url: &str,
        runner_version: &str,
        validator_version: &str,
    ) -> Result<Endpoint, UrlError> {
        let error = |problem: &str| UrlError {
            url: url.to_owned(),
            problem: problem.to_owned(),
        };
        let request = url
            .into_client_request()
            .map_err(|e| error(&e.to_string()))?;
        match request.uri().scheme_str() {
            Some("ws") | Some("wss") => {}
            _ => return Err(error("the scheme must be ws:// or wss://")),
        }
        if request.uri().host().is_none_or(str::is_empty) {
            return Err(error("there is no host"));
        }
        for value in [runner_version, validator_version] {
            HeaderValue::from_str(value)
                .map_err(|_| error("a version header value is not valid"))?;
        }
        Ok(Endpoint {
            url: url.to_owned(),
            runner_version: runner_version.to_owned(),
            validator_version: validator_version.to_owned(),
            tls: None,
        })
    }

    /// Trusts the certificates of the PEM file at `path` for `wss://`, on top of the public web roots
    /// (`--ca-file`). An unreadable or malformed file is an error.
    pub(crate) fn with_ca_file(self, path: &Path) -> Result<Endpoint, CaFileError> {
        Ok(self.with_tls_config(tls_config_with_ca_file(path)?))
    }

    /// Uses this TLS client configuration for `wss://`.
    pub(crate) fn with_tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Endpoint {
        self.tls = Some(config);
        self
    }

    /// The URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    fn connect(&self, limits: TransportLimits) -> Connecting {
        let endpoint = self.clone();
        Box::pin(async move {
            let mut request = endpoint
                .url
                .as_str()
                .into_client_request()
                .map_err(|e| e.to_string())?;
            let headers = request.headers_mut();
            // Both values were checked in `Endpoint::new`.
            if let Ok(v) = HeaderValue::from_str(&endpoint.runner_version) {
                headers.insert("X-Validator-Runner-Version", v);
            }
            if let Ok(v) = HeaderValue::from_str(&endpoint.validator_version) {
                headers.insert("X-Validator-Version", v);
            }
            let connector = endpoint.tls.map(Connector::Rustls);
            let (ws, _response) = tokio_tungstenite::connect_async_tls_with_config(
                request,
                Some(limits.websocket_config()),
                true,
                connector,
            )
            .await
            .map_err(describe_error)?;
            Ok(ws)
        })
    }
}

/// With this many messages queued, writing goes before reading (see [`Socket::poll`]).
const FLUSH_BACKLOG: usize = 256;

/// What [`Socket::poll`] did.
#[derive(Debug)]
pub(crate) enum Polled {
    /// Events were read into the batch.
    Read,
    /// Everything queued was written out.
    Flushed,
    /// Writing failed: the socket is gone.
    Failed(SocketEvent),
}

/// What the socket reports to the loop.
#[derive(Debug)]
pub(crate) enum SocketEvent {
    /// The WebSocket handshake completed.
    Opened,
    /// Opening failed.
    OpenFailed(String),
    /// A message arrived (Text, Binary, Pong; Pings are answered by tungstenite).
    Message(Message),
    /// The peer closed (with its code, if it sent a close frame), or the stream ended.
    Closed(Option<u16>),
    /// Reading or writing failed.
    Failed(String),
}

/// The socket as the loop holds it: none, being opened, or open with its outgoing queue.
pub(crate) enum Socket {
    /// No socket.
    None,
    /// TCP/TLS/WebSocket handshake under way.
    Connecting(Connecting),
    /// Open.
    Open(Box<Conn>),
}

/// An open WebSocket and the messages waiting to be handed to it.
pub(crate) struct Conn {
    ws: WsStream,
    outgoing: VecDeque<Message>,
    needs_flush: bool,
    /// The socket's end (closed or failed), read in a batch behind other messages: reported by the next poll, so
    /// the messages before it are handled while the socket still counts as open, as when read one at a time.
    ended: Option<SocketEvent>,
    /// The flush yielded once to the runtime and goes ahead on the next poll (see [`Socket::poll`]).
    yielded: bool,
}

impl Polled {
    fn from_flush(flushed: Option<SocketEvent>) -> Polled {
        match flushed {
            None => Polled::Flushed,
            Some(failed) => Polled::Failed(failed),
        }
    }
}

impl Socket {
    /// Drives the socket for the loop: writes a large backlog first, else reads every event already available (up
    /// to `max`, into `batch`), else flushes what is queued. With `yield_first`, the flush first yields once to the
    /// runtime, so that statuses the job handlers are about to send join the same write. `Pending` while there is
    /// nothing to do.
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        batch: &mut Vec<SocketEvent>,
        max: usize,
        yield_first: bool,
    ) -> Poll<Polled> {
        if self.backlog() >= FLUSH_BACKLOG {
            // Nothing more is read until the backlog is written.
            return self.poll_flush(cx).map(Polled::from_flush);
        }
        if self.poll_events(cx, batch, max).is_ready() {
            return Poll::Ready(Polled::Read);
        }
        if !self.needs_flush() {
            return Poll::Pending;
        }
        if let Socket::Open(conn) = self {
            if yield_first && !conn.yielded {
                conn.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            conn.yielded = false;
        }
        self.poll_flush(cx).map(Polled::from_flush)
    }

    /// Starts opening a socket, dropping any previous one.
    pub(crate) fn open(&mut self, endpoint: &Endpoint, limits: TransportLimits) {
        *self = Socket::Connecting(endpoint.connect(limits));
    }

    /// Drops the socket at once (no close handshake).
    pub(crate) fn abort(&mut self) {
        *self = Socket::None;
    }

    /// Whether there is anything to poll.
    pub(crate) fn is_active(&self) -> bool {
        !matches!(self, Socket::None)
    }

    /// Queues a message. Returns false (and drops it) when no socket is open: the machine never asks for that, so
    /// it is a bug worth logging, not a silent loss of a status (statuses stay in the machine's outbox until
    /// acknowledged anyway).
    pub(crate) fn send(&mut self, message: Message) -> bool {
        match self {
            Socket::Open(conn) => {
                conn.outgoing.push_back(message);
                true
            }
            _ => false,
        }
    }

    /// Queues the close frame.
    pub(crate) fn close(&mut self, code: u16) -> bool {
        self.send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        })))
    }

    /// Whether something was queued or handed to tungstenite and not yet flushed.
    pub(crate) fn needs_flush(&self) -> bool {
        match self {
            Socket::Open(conn) => {
                conn.ended.is_none() && (conn.needs_flush || !conn.outgoing.is_empty())
            }
            _ => false,
        }
    }

    /// Messages queued and not yet handed to tungstenite.
    pub(crate) fn backlog(&self) -> usize {
        match self {
            Socket::Open(conn) => conn.outgoing.len(),
            _ => 0,
        }
    }

    /// Writes out everything queued: `Ready(None)` once flushed, `Ready(Some(Failed))` when writing failed (the
    /// socket is then dropped), `Pending` while the socket cannot take more.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Option<SocketEvent>> {
        match self {
            // Ended: what is queued is lost with the socket (the machine re-sends what was not acknowledged).
            Socket::Open(conn) if conn.ended.is_some() => Poll::Ready(None),
            Socket::Open(conn) => {
                let flushed = conn.poll_flush(cx);
                if let Poll::Ready(Some(_)) = flushed {
                    *self = Socket::None;
                }
                flushed
            }
            _ => Poll::Ready(None),
        }
    }

    /// Like [`Socket::poll_event`], but takes every event already available, up to `max`, into `out`; `Ready` once
    /// at least one was taken. Stops at an event that is not a message (opened, closed, failed), so nothing of a
    /// later socket is ever mixed in; an end read behind messages is held back for the next poll, so those
    /// messages are handled while the socket still counts as open, as when read one at a time.
    fn poll_events(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<SocketEvent>,
        max: usize,
    ) -> Poll<()> {
        while out.len() < max {
            let event = match self {
                // Behind messages of this batch, the socket's end waits for the next poll (see `Conn::ended`).
                Socket::Open(conn) if !out.is_empty() => match conn.poll_event(cx) {
                    Poll::Ready(end @ (SocketEvent::Closed(_) | SocketEvent::Failed(_))) => {
                        conn.ended = Some(end);
                        break;
                    }
                    Poll::Ready(event) => event,
                    Poll::Pending => break,
                },
                _ => match self.poll_event(cx) {
                    Poll::Ready(event) => event,
                    Poll::Pending => break,
                },
            };
            let last = !matches!(event, SocketEvent::Message(_));
            out.push(event);
            if last {
                break;
            }
        }
        if out.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// Drives the socket: finishes opening, hands queued messages to tungstenite, and reads (without flushing:
    /// see [`Socket::poll_flush`]). Returns the next event; `Pending` when there is nothing to report.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<SocketEvent> {
        match self {
            Socket::None => Poll::Pending,
            Socket::Connecting(connecting) => match connecting.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(ws)) => {
                    *self = Socket::Open(Box::new(Conn {
                        ws,
                        outgoing: VecDeque::new(),
                        needs_flush: false,
                        ended: None,
                        yielded: false,
                    }));
                    Poll::Ready(SocketEvent::Opened)
                }
                Poll::Ready(Err(why)) => {
                    *self = Socket::None;
                    Poll::Ready(SocketEvent::OpenFailed(why))
                }
            },
            Socket::Open(conn) => {
                let event = match conn.ended.take() {
                    Some(end) => Poll::Ready(end),
                    None => conn.poll_event(cx),
                };
                if let Poll::Ready(SocketEvent::Closed(_) | SocketEvent::Failed(_)) = event {
                    *self = Socket::None;
                }
                event
            }
        }
    }
}

impl Conn {
    /// Write side: each queued message moves into tungstenite's buffer in one synchronous step (tungstenite
    /// writes to the socket only when that buffer is over its size; the rest waits for [`Conn::poll_flush`]).
    fn hand_over(&mut self, cx: &mut Context<'_>) -> Result<(), SocketEvent> {
        let mut ws = Pin::new(&mut self.ws);
        while !self.outgoing.is_empty() {
            match ws.as_mut().poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    let Some(message) = self.outgoing.pop_front() else {
                        break;
                    };
                    ws.as_mut()
                        .start_send(message)
                        .map_err(|e| SocketEvent::Failed(describe_error(e)))?;
                    self.needs_flush = true;
                }
                Poll::Ready(Err(e)) => return Err(SocketEvent::Failed(describe_error(e))),
                Poll::Pending => break,
            }
        }
        Ok(())
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Option<SocketEvent>> {
        if let Err(event) = self.hand_over(cx) {
            return Poll::Ready(Some(event));
        }
        match Pin::new(&mut self.ws).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.needs_flush = !self.outgoing.is_empty();
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => Poll::Ready(Some(SocketEvent::Failed(describe_error(e)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<SocketEvent> {
        if let Err(event) = self.hand_over(cx) {
            return Poll::Ready(event);
        }
        let mut ws = Pin::new(&mut self.ws);
        // Read side.
        match ws.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(SocketEvent::Closed(None)),
            Poll::Ready(Some(Err(e))) => Poll::Ready(SocketEvent::Failed(describe_error(e))),
            Poll::Ready(Some(Ok(Message::Close(frame)))) => {
                // tungstenite queued the close reply; push it out now, best effort, before the socket is dropped.
                let _ = ws.as_mut().poll_flush(cx);
                Poll::Ready(SocketEvent::Closed(frame.map(|f| u16::from(f.code))))
            }
            Poll::Ready(Some(Ok(message))) => {
                if matches!(message, Message::Ping(_)) {
                    // tungstenite queued the Pong; the loop's next flush writes it.
                    self.needs_flush = true;
                }
                Poll::Ready(SocketEvent::Message(message))
            }
        }
    }
}

fn describe_error(error: tungstenite::Error) -> String {
    use tungstenite::Error;
    let text = match error {
        Error::Io(e) => format!("I/O error: {e}"),
        Error::Tls(e) => format!("TLS error: {e}"),
        Error::Capacity(e) => format!("frame over the size limit: {e}"),
        Error::Protocol(e) => format!("WebSocket protocol error: {e}"),
        Error::Utf8(e) => format!("text frame is not valid UTF-8: {e}"),
        Error::Url(e) => format!("bad URL: {e}"),
        Error::Http(response) => format!(
            "the server refused the WebSocket upgrade: HTTP {}",
            response.status()
        ),
        other => other.to_string(),
    };
    // rustls reports an untrusted certificate as "invalid peer certificate: UnknownIssuer" (inside an I/O error):
    // say what to do about it.
    if text.contains("invalid peer certificate") {
        format!(
            "{text} (the facilitator's TLS certificate is not trusted: if it is signed by a private CA, pass that \
             CA with --ca-file)"
        )
    } else {
        text
    }
}
