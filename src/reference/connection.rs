//! The reference facilitator's sockets: the accept loop, the WebSocket handshake (route `/ws/v0/` only), and one
//! task per connection that reads frames, lets [`State`](super::state::State) decide, and writes the answers.
//!
//! A connection task handles its frames and the frames pushed to it strictly one at a time, in order, as the real
//! server does (docs/PROTOCOL.md 1), so Responses come back in the order of the messages that caused them. Every await
//! is raced against the connection's kill switch, so `drop_all_connections` ends a connection at once even when its
//! client stopped reading. Never panics on client input.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request, Response as HttpResponse,
};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::records::{ConnectionEnd, ConnectionId};
use super::state::{After, Command, ConnectionFaults, Decision, Outgoing, Shared};
use crate::protocol::Response;

/// The only route (docs/PROTOCOL.md 1).
pub(crate) const PATH: &str = "/ws/v0/";

/// A connection's byte stream: plain TCP, or TLS over it.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Stream = Box<dyn Io>;

/// A client that has not finished its TLS and WebSocket handshakes by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The close code sent to every connection at shutdown: 1012 (service restart), as uvicorn does when its server
/// stops [unverified against the deployed server].
const SHUTDOWN_CLOSE_CODE: u16 = 1012;

/// Accepts connections until `shutdown` turns true, then closes every connection (bounded by the close timeout)
/// and returns. Dropping this future aborts every connection task.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            // Also ends when the facilitator handle is gone (the sender dropped).
            () = thrown(&mut shutdown) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    connections.spawn(serve_connection(Arc::clone(&shared), tcp, tls.clone(), peer));
                }
                Err(e) => {
                    log::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
        }
    }
    drop(listener);
    shared.update(|s| s.command_all(|| Command::Shutdown));
    let grace = shared.close_timeout + Duration::from_millis(200);
    let all_ended = async { while connections.join_next().await.is_some() {} };
    if timeout(grace, all_ended).await.is_err() {
        log::debug!("connections still open after the shutdown grace period are dropped");
    }
}

/// What the handshake callback saw.
#[derive(Default)]
struct Upgrade {
    path: String,
    accepted: bool,
    runner_version: Option<String>,
    validator_version: Option<String>,
}

async fn serve_connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    peer: SocketAddr,
) {
    // Responses are small and latency matters more than packet count.
    let _ = tcp.set_nodelay(true);
    let started = Instant::now();
    let stream: Stream = match tls {
        None => Box::new(tcp),
        Some(acceptor) => match timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => Box::new(tls),
            Ok(Err(e)) => {
                log::info!("TLS handshake with {peer} failed: {e}");
                return;
            }
            Err(_) => {
                log::debug!("TLS handshake with {peer} timed out");
                return;
            }
        },
    };
    let handshake_left = HANDSHAKE_TIMEOUT.saturating_sub(started.elapsed());
    let mut upgrade = Upgrade::default();
    // The error type is tungstenite's: its callback API returns a whole HTTP response.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: HttpResponse| {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        upgrade.path = request.uri().path_and_query().map_or_else(
            || request.uri().path().to_owned(),
            |p| p.as_str().to_owned(),
        );
        upgrade.runner_version = header("x-validator-runner-version");
        upgrade.validator_version = header("x-validator-version");
        if request.uri().path() == PATH {
            upgrade.accepted = true;
            Ok(response)
        } else {
            let mut refusal = ErrorResponse::new(Some("Not Found".to_owned()));
            *refusal.status_mut() = StatusCode::NOT_FOUND;
            Err(refusal)
        }
    };
    let handshake = tokio_tungstenite::accept_hdr_async(stream, callback);
    let ws = match timeout(handshake_left, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            if !upgrade.accepted && !upgrade.path.is_empty() {
                shared.update(|s| s.reject_handshake(peer, upgrade.path, Instant::now()));
            } else {
                log::debug!("WebSocket handshake with {peer} failed: {e}");
            }
            return;
        }
        Err(_) => {
            log::debug!("WebSocket handshake with {peer} timed out");
            return;
        }
    };
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let (kill_tx, kill) = watch::channel(false);
    let (id, faults) = shared.update(|s| {
        s.open_connection(
            peer,
            upgrade.runner_version,
            upgrade.validator_version,
            commands_tx,
            kill_tx,
            Instant::now(),
        )
    });
    let mut connection = Connection {
        shared,
        id,
        ws,
        commands,
        kill,
        faults,
        messages: 0,
        held: None,
    };
    let end = connection.serve().await;
    connection
        .shared
        .update(|s| s.end_connection(id, end, Instant::now()));
    // Dropping `connection` closes the socket; without a close frame unless one was exchanged.
}

struct Connection {
    shared: Arc<Shared>,
    id: ConnectionId,
    ws: WebSocketStream<Stream>,
    commands: mpsc::UnboundedReceiver<Command>,
    kill: watch::Receiver<bool>,
    faults: ConnectionFaults,
    /// Text and binary frames handled so far.
    messages: u64,
    /// While Responses are held ([`Command::HoldResponses`]): the ones not written yet, in order.
    held: Option<Vec<Response>>,
}

/// A fault that hits now.
enum Fault {
    Drop,
    Close(u16),
    Stall,
}

enum Event {
    Command(Option<Command>),
    Frame(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
}

impl Connection {
    async fn serve(&mut self) -> ConnectionEnd {
        loop {
            match self.fault_due() {
                Some(Fault::Drop) => {
                    log::info!("connection {}: dropped by a fault", self.id);
                    return ConnectionEnd::Dropped;
                }
                Some(Fault::Close(code)) => return self.close(code).await,
                Some(Fault::Stall) => return self.stall().await,
                None => {}
            }
            // Every branch is cancel-safe: `thrown`, `recv` and `next` lose nothing when another branch wins.
            let event = tokio::select! {
                biased;
                () = thrown(&mut self.kill) => return ConnectionEnd::Dropped,
                command = self.commands.recv() => Event::Command(command),
                frame = self.ws.next() => Event::Frame(frame),
            };
            let outcome = match event {
                Event::Command(command) => self.command(command).await,
                Event::Frame(frame) => self.frame(frame).await,
            };
            if let Some(end) = outcome {
                return end;
            }
        }
    }

    fn fault_due(&self) -> Option<Fault> {
        let reached = |after: Option<u64>| after.is_some_and(|n| self.messages >= n);
        if reached(self.faults.drop_after) {
            return Some(Fault::Drop);
        }
        if let Some((n, code)) = self.faults.close_after
            && self.messages >= n
        {
            return Some(Fault::Close(code));
        }
        reached(self.faults.stall_after).then_some(Fault::Stall)
    }

    async fn command(&mut self, command: Option<Command>) -> Option<ConnectionEnd> {
        match command {
            Some(Command::Send(outgoing)) => self.push(outgoing).await.err(),
            Some(Command::Close(code)) => Some(self.close(code).await),
            Some(Command::Stall) => Some(self.stall().await),
            Some(Command::HoldResponses(true)) => {
                self.held.get_or_insert_with(Vec::new);
                None
            }
            Some(Command::HoldResponses(false)) => {
                for response in self.held.take().unwrap_or_default() {
                    if let Err(end) = self.answer(response).await {
                        return Some(end);
                    }
                }
                None
            }
            Some(Command::Shutdown) | None => {
                self.close(SHUTDOWN_CLOSE_CODE).await;
                Some(ConnectionEnd::Shutdown)
            }
        }
    }

    async fn frame(
        &mut self,
        frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Option<ConnectionEnd> {
        let id = self.id;
        let decision = match frame {
            None => {
                return Some(ConnectionEnd::ClientVanished(
                    "the connection ended without a close frame".into(),
                ));
            }
            Some(Err(e)) => return Some(ConnectionEnd::ClientVanished(e.to_string())),
            Some(Ok(Message::Text(text))) => {
                self.messages += 1;
                self.shared
                    .update(|s| s.handle_text(id, text.as_str(), Instant::now()))
            }
            Some(Ok(Message::Binary(bytes))) => {
                self.messages += 1;
                self.shared
                    .update(|s| s.handle_binary(id, bytes.to_vec(), Instant::now()))
            }
            Some(Ok(Message::Close(frame))) => {
                // 1005: a close frame without a code.
                let code = frame.map_or(1005, |f| u16::from(f.code));
                self.shared.update(|s| {
                    s.stop_delivering(id);
                    s.record_close_received(id, code);
                });
                // tungstenite queued the close reply; flush it, but never wait long for a client that went quiet.
                let _ = timeout(self.shared.close_timeout, self.ws.flush()).await;
                return Some(ConnectionEnd::ClientClosed);
            }
            // tungstenite answers pings itself (the pong goes out with the next read or write).
            Some(Ok(_)) => return None,
        };
        self.carry_out(decision).await
    }

    async fn carry_out(&mut self, decision: Decision) -> Option<ConnectionEnd> {
        if let Some(response) = decision.reply {
            match &mut self.held {
                Some(held) => held.push(response),
                None => {
                    if let Err(end) = self.answer(response).await {
                        return Some(end);
                    }
                }
            }
        }
        for outgoing in decision.then {
            if let Err(end) = self.push(outgoing).await {
                return Some(end);
            }
        }
        match decision.after {
            After::Continue => None,
            After::Close(code) => Some(self.close(code).await),
            After::Crash(reason) => {
                log::info!(
                    "connection {}: the real server's handler would crash here ({reason}); dropping the \
                     connection without a Response or close frame",
                    self.id
                );
                Some(ConnectionEnd::Crashed(reason))
            }
        }
    }

    /// Writes a Response and records it.
    async fn answer(&mut self, response: Response) -> Result<(), ConnectionEnd> {
        self.write(Message::text(response.to_json())).await?;
        let id = self.id;
        self.shared
            .update(|s| s.record_response(id, response, Instant::now()));
        Ok(())
    }

    async fn push(&mut self, outgoing: Outgoing) -> Result<(), ConnectionEnd> {
        self.write(outgoing.message).await?;
        let id = self.id;
        self.shared
            .update(|s| s.record_push(id, outgoing.kind, Instant::now()));
        Ok(())
    }

    /// Writes and flushes one frame, unless the kill switch is thrown first.
    async fn write(&mut self, message: Message) -> Result<(), ConnectionEnd> {
        tokio::select! {
            biased;
            () = thrown(&mut self.kill) => Err(ConnectionEnd::Dropped),
            written = self.ws.send(message) => written
                .map_err(|e| ConnectionEnd::ClientVanished(format!("writing failed: {e}"))),
        }
    }

    /// Sends a close frame and waits (bounded) for the client's.
    async fn close(&mut self, code: u16) -> ConnectionEnd {
        let id = self.id;
        self.shared.update(|s| {
            s.stop_delivering(id);
            s.record_close_sent(id, code);
        });
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        };
        let handshake = close_handshake(&mut self.ws, &self.shared, id, frame);
        tokio::select! {
            biased;
            () = thrown(&mut self.kill) => ConnectionEnd::Dropped,
            _ = timeout(self.shared.close_timeout, handshake) => ConnectionEnd::ServerClosed,
        }
    }

    /// Reads and writes nothing more; the socket stays open until the kill switch or shutdown.
    async fn stall(&mut self) -> ConnectionEnd {
        let id = self.id;
        self.shared.update(|s| s.mark_stalled(id));
        loop {
            tokio::select! {
                biased;
                () = thrown(&mut self.kill) => return ConnectionEnd::Dropped,
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown) | None => return ConnectionEnd::Shutdown,
                    // Stalled: frames pushed here are lost, as on a dead network path.
                    Some(_) => {}
                },
            }
        }
    }
}

/// Resolves once the switch is on, or once its sender is gone. Cancel-safe: it only looks at the current value.
async fn thrown(switch: &mut watch::Receiver<bool>) {
    // The `Ref` it returns must not live across an await (it holds a lock); an error means the sender is gone,
    // which ends the wait as well.
    let _ = switch.wait_for(|on| *on).await;
}

async fn close_handshake(
    ws: &mut WebSocketStream<Stream>,
    shared: &Shared,
    id: ConnectionId,
    frame: CloseFrame,
) {
    if ws.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    // Until the client's close frame and the end of the stream; frames after our close are ignored.
    while let Some(Ok(message)) = ws.next().await {
        if let Message::Close(reply) = message {
            let code = reply.map_or(1005, |f| u16::from(f.code));
            shared.update(|s| s.record_close_received(id, code));
        }
    }
}
