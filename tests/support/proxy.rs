//! A fault-injecting TCP proxy for tests: it sits on loopback between the client and the reference facilitator
//! and, on a schedule drawn from a seed, cuts connections (often in the middle of a WebSocket frame), black-holes
//! one direction while keeping the socket open (half-open), adds latency, throttles to a trickle, and refuses new
//! connections (accepts then closes at once, or stops accepting for a while). It can also inject raw WebSocket
//! frames into the facilitator-to-client stream at a frame boundary, for bad-input tests.
//!
//! Faults are counted in frames, not bytes: the proxy parses WebSocket frame headers (both directions, after the
//! HTTP upgrade) so "a fault every few dozen messages" means what it says, and a cut lands a random number of bytes
//! past a frame boundary, usually inside the next frame. The same seed gives the same sequence of faults (kinds,
//! frame counts, offsets, durations); where they land in time depends on the run.
//!
//! By the clock ([`Mode::Clock`]) the faults come every so many seconds of real time instead, whatever the
//! traffic: each tick arms the next fault of the mix on the open connection, to hit a few bytes into its next frame,
//! and a tick that finds a half-open (stalled) connection cuts it, as a network that noticed the dead path would.
//!
//! It never decides anything about the protocol and never parses payloads; a fault only ever moves, delays, drops
//! or cuts bytes.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// The seed of a chaos run: `CHAOS_SEED` (decimal or `0x` hex) if set, else a fresh one. Printed, so a failing
/// run's output says how to reproduce it.
pub fn chaos_seed() -> u64 {
    let seed = match std::env::var("CHAOS_SEED") {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("CHAOS_SEED={text:?} is not a u64: {e}"))
        }
        Err(_) => {
            use std::hash::{BuildHasher, Hasher};
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            hasher.finish()
        }
    };
    println!("chaos seed {seed} (reproduce with CHAOS_SEED={seed})");
    seed
}

/// A small seeded generator (xorshift64*, seeded through splitmix64): the fault schedule's only source of chance.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator for `seed`; different seeds give unrelated streams.
    pub fn new(seed: u64) -> XorShift {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        XorShift((z ^ (z >> 31)) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi` (`lo` if the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Uniform in `lo..=hi`, for durations (millisecond steps).
    pub fn duration(&mut self, (lo, hi): (Duration, Duration)) -> Duration {
        Duration::from_millis(self.range(lo.as_millis() as u64, hi.as_millis() as u64))
    }

    /// Shuffles in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.range(0, i as u64) as usize;
            items.swap(i, j);
        }
    }
}

/// A direction of the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Client to facilitator.
    Up,
    /// Facilitator to client.
    Down,
}

impl Dir {
    fn index(self) -> usize {
        match self {
            Dir::Up => 0,
            Dir::Down => 1,
        }
    }
}

/// A fault on an open connection, hitting one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Forward up to the fault point (usually inside a frame), then close both sides.
    Cut(Dir),
    /// From the fault point on, drop everything in this direction; the sockets stay open (half-open).
    Stall(Dir),
    /// Add latency to this direction for a number of frames.
    Delay(Dir),
    /// Trickle this direction (a few bytes per tick) for a number of frames.
    Throttle(Dir),
}

/// What happens to a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptFate {
    Serve,
    /// Accept, then close at once.
    Close,
    /// Stop accepting for this long (this connection waits in the backlog), then serve it.
    Pause(Duration),
}

/// The schedule of a chaos run.
#[derive(Debug, Clone)]
pub struct ChaosPlan {
    /// A connection fault after this many frames (uniform, inclusive) in the direction it hits, counted from the
    /// previous fault on the connection (or from the upgrade).
    pub frames_between_faults: (u64, u64),
    /// The fault point lies this many bytes (uniform, inclusive) past that frame boundary: usually inside a frame.
    pub bytes_past_boundary: (u64, u64),
    /// One round of the fault bag: each round, these faults in a shuffled order. Repeat a kind to weight it.
    pub mix: Vec<Fault>,
    /// Latency added by a `Delay`.
    pub delay: (Duration, Duration),
    /// A `Throttle` writes this many bytes per tick.
    pub throttle_bytes: usize,
    /// The tick of a `Throttle`.
    pub throttle_tick: Duration,
    /// How many frames a `Delay` or `Throttle` lasts.
    pub slow_frames: (u64, u64),
    /// Of every `accept_round` new connections (in a shuffled order), one is closed at once and one waits for a
    /// pause in accepting; the rest are served. 0 refuses nothing.
    pub accept_round: u32,
    /// How long accepting stops.
    pub pause: (Duration, Duration),
}

impl ChaosPlan {
    /// Every kind of fault, cuts weighted double (they are the ones that cut frames in half).
    pub fn every_kind(frames_between_faults: (u64, u64)) -> ChaosPlan {
        use Dir::{Down, Up};
        ChaosPlan {
            frames_between_faults,
            bytes_past_boundary: (1, 400),
            mix: vec![
                Fault::Cut(Up),
                Fault::Cut(Up),
                Fault::Cut(Down),
                Fault::Cut(Down),
                Fault::Stall(Up),
                Fault::Stall(Down),
                Fault::Delay(Up),
                Fault::Delay(Down),
                Fault::Throttle(Up),
                Fault::Throttle(Down),
            ],
            delay: (Duration::from_millis(5), Duration::from_millis(60)),
            throttle_bytes: 256,
            throttle_tick: Duration::from_millis(2),
            slow_frames: (5, 20),
            accept_round: 8,
            pause: (Duration::from_millis(20), Duration::from_millis(300)),
        }
    }
}

/// How the proxy behaves towards connections.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Inject faults on this plan, counted in frames.
    Chaos(ChaosPlan),
    /// Inject the plan's faults by the clock: one every `every` (uniform, inclusive) of real time. Each tick draws
    /// the next fault of the mix and arms it on every open connection, to hit the plan's `bytes_past_boundary`
    /// into a frame once `frames_between_faults` more frames (0: the next one) have passed in its direction; a tick
    /// that finds a connection half-open (stalled) cuts it instead. New connections meet the plan's accept fates.
    Clock {
        /// The pause between two ticks.
        every: (Duration, Duration),
        /// What the ticks inject.
        plan: ChaosPlan,
    },
}

/// Faults injected so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections accepted (refused ones included).
    pub accepted: u64,
    /// Connections accepted and closed at once.
    pub closed_at_accept: u64,
    /// Pauses in accepting.
    pub accept_pauses: u64,
    /// Cuts of the client-to-facilitator direction.
    pub cuts_up: u64,
    /// Cuts of the facilitator-to-client direction.
    pub cuts_down: u64,
    /// Cuts that landed inside a frame (or inside the HTTP upgrade).
    pub cuts_mid_frame: u64,
    /// Half-open stalls of the client-to-facilitator direction.
    pub stalls_up: u64,
    /// Half-open stalls of the facilitator-to-client direction.
    pub stalls_down: u64,
    /// Latency episodes.
    pub delays: u64,
    /// Trickle episodes.
    pub throttles: u64,
    /// Connections cut on request ([`Proxy::cut_all`]).
    pub cut_on_request: u64,
    /// Frames injected ([`Proxy::inject`], [`Proxy::inject_on_next_connection`]).
    pub injected_frames: u64,
    /// Ticks of [`Mode::Clock`].
    pub clock_ticks: u64,
    /// Ticks that found no open connection (the client was reconnecting): nothing drawn.
    pub clock_ticks_idle: u64,
    /// Half-open (stalled) connections cut by the next tick.
    pub stalls_cut: u64,
}

impl Counters {
    /// Faults injected by the schedule: cuts, stalls, slowdowns, refused connections and accept pauses.
    pub fn faults(&self) -> u64 {
        self.closed_at_accept
            + self.accept_pauses
            + self.cuts_up
            + self.cuts_down
            + self.stalls_up
            + self.stalls_down
            + self.delays
            + self.throttles
    }

    /// Faults after which the client must reconnect: cuts, stalls and refused connections.
    pub fn disruptive(&self) -> u64 {
        self.closed_at_accept + self.cuts_up + self.cuts_down + self.stalls_up + self.stalls_down
    }
}

/// A running proxy. Dropping it aborts everything; [`Proxy::shutdown`] waits for that.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    clock: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`, in `Mode::Pass` until told
    /// otherwise. `seed` drives the fault schedule.
    pub async fn start(upstream: SocketAddr, seed: u64) -> io::Result<Proxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            mode_changed: Notify::new(),
            state: Mutex::new(ProxyState {
                mode: Mode::Pass,
                schedule: Schedule::new(seed),
                counters: Counters::default(),
                connections: HashMap::new(),
                next_id: 0,
                next_connection_injection: None,
            }),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(Arc::clone(&shared), listener, stop_rx));
        let clock = tokio::spawn(clock_loop(Arc::clone(&shared), stop.subscribe()));
        Ok(Proxy {
            addr,
            shared,
            stop,
            task: Some(task),
            clock: Some(clock),
        })
    }

    /// The WebSocket URL of the facilitator through the proxy.
    pub fn url(&self) -> String {
        format!("ws://{}/ws/v0/", self.addr)
    }

    /// Changes the mode. Open connections get a fresh plan in the new mode (none in `Pass`) and lose their
    /// slowdowns; a stall already in place stays (its bytes are gone).
    pub fn set_mode(&self, mode: Mode) {
        let connections: Vec<Arc<Connection>> = {
            let mut state = self.shared.lock();
            state.mode = mode;
            state.connections.values().cloned().collect()
        };
        for connection in connections {
            // Lock order everywhere: a connection, then the proxy.
            let mut c = connection.lock();
            c.slow = [None, None];
            c.planned = self.shared.lock().draw_fault(&c);
        }
        // A stored permit: the clock sees the change even if it is not waiting right now.
        self.shared.mode_changed.notify_one();
    }

    /// Counters of the faults injected so far.
    pub fn counters(&self) -> Counters {
        self.shared.lock().counters.clone()
    }

    /// Connections being forwarded now.
    pub fn live_connections(&self) -> usize {
        self.shared.lock().connections.len()
    }

    /// Cuts every open connection now (both sides closed).
    pub fn cut_all(&self) {
        let connections: Vec<Arc<Connection>> = {
            let mut state = self.shared.lock();
            state.counters.cut_on_request += state.connections.len() as u64;
            state.connections.values().cloned().collect()
        };
        for connection in connections {
            connection.kill.send_replace(true);
        }
    }

    /// Black-holes one direction of every open connection now, keeping the sockets open (half-open).
    pub fn stall_all(&self, dir: Dir) {
        let connections: Vec<Arc<Connection>> =
            self.shared.lock().connections.values().cloned().collect();
        for connection in connections {
            let mut c = connection.lock();
            if !c.stalled[dir.index()] {
                c.stalled[dir.index()] = true;
                let mut state = self.shared.lock();
                match dir {
                    Dir::Up => state.counters.stalls_up += 1,
                    Dir::Down => state.counters.stalls_down += 1,
                }
            }
        }
    }

    /// Writes `frame` (raw bytes, normally one whole WebSocket frame) into every open connection's
    /// facilitator-to-client stream at its next frame boundary.
    pub fn inject(&self, frame: Vec<u8>) {
        let connections: Vec<Arc<Connection>> =
            self.shared.lock().connections.values().cloned().collect();
        for connection in connections {
            connection.lock().inject.push_back(frame.clone());
            connection.injected.notify_one();
        }
    }

    /// Writes `frame` into the next new connection's facilitator-to-client stream right after the HTTP upgrade,
    /// before the first frame; with `replace_first_frame`, that first frame (the auth Response) is dropped.
    pub fn inject_on_next_connection(&self, frame: Vec<u8>, replace_first_frame: bool) {
        self.shared.lock().next_connection_injection = Some((frame, replace_first_frame));
    }

    /// Stops accepting, cuts every connection and waits for the tasks to end.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        for task in [self.task.take(), self.clock.take()].into_iter().flatten() {
            let _ = task.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in [self.task.take(), self.clock.take()].into_iter().flatten() {
            task.abort();
        }
    }
}

/// A raw, unmasked server-to-client WebSocket frame (FIN set) with this opcode and payload.
pub fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | (opcode & 0x0f)];
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

// ---- shared state ------------------------------------------------------------------------------------------

struct Shared {
    upstream: SocketAddr,
    /// Told when the mode changes (the clock's pace may have changed).
    mode_changed: Notify,
    state: Mutex<ProxyState>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ProxyState> {
        // Nothing panics while holding it; if something did, the counters are still worth reading.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct ProxyState {
    mode: Mode,
    schedule: Schedule,
    counters: Counters,
    connections: HashMap<u64, Arc<Connection>>,
    next_id: u64,
    next_connection_injection: Option<(Vec<u8>, bool)>,
}

impl ProxyState {
    fn accept_fate(&mut self) -> AcceptFate {
        self.counters.accepted += 1;
        let (Mode::Chaos(plan) | Mode::Clock { plan, .. }) = &self.mode else {
            return AcceptFate::Serve;
        };
        let fate = self.schedule.accept_fate(plan);
        match fate {
            AcceptFate::Close => self.counters.closed_at_accept += 1,
            AcceptFate::Pause(_) => self.counters.accept_pauses += 1,
            AcceptFate::Serve => {}
        }
        fate
    }

    /// How long until the next tick, if the mode has a clock.
    fn next_tick(&mut self) -> Option<Duration> {
        let Mode::Clock { every, .. } = &self.mode else {
            return None;
        };
        Some(self.schedule.faults.duration(*every))
    }

    /// The next fault of a tick, armed relative to frame 0 (each connection adds its own frame count).
    fn draw_clock_fault(&mut self) -> Option<Planned> {
        let Mode::Clock { plan, .. } = &self.mode else {
            return None;
        };
        Some(self.schedule.next_fault(plan, &ConnectionState::default()))
    }

    /// The next fault for a connection in this state, if the mode has any (by the clock: none of its own).
    fn draw_fault(&mut self, connection: &ConnectionState) -> Option<Planned> {
        let Mode::Chaos(plan) = &self.mode else {
            return None;
        };
        Some(self.schedule.next_fault(plan, connection))
    }
}

/// The fault schedule: two seeded streams (connection faults, accept fates), each drawn from shuffled bags so that
/// every kind in the mix shows up in every round.
struct Schedule {
    faults: XorShift,
    accepts: XorShift,
    fault_bag: VecDeque<Fault>,
    accept_bag: VecDeque<AcceptFate>,
}

impl Schedule {
    fn new(seed: u64) -> Schedule {
        Schedule {
            faults: XorShift::new(seed),
            accepts: XorShift::new(seed ^ 0xACCE_A7ED),
            fault_bag: VecDeque::new(),
            accept_bag: VecDeque::new(),
        }
    }

    fn accept_fate(&mut self, plan: &ChaosPlan) -> AcceptFate {
        if plan.accept_round == 0 {
            return AcceptFate::Serve;
        }
        if self.accept_bag.is_empty() {
            let mut round = vec![AcceptFate::Serve; plan.accept_round.max(2) as usize];
            round[0] = AcceptFate::Close;
            round[1] = AcceptFate::Pause(Duration::ZERO);
            self.accepts.shuffle(&mut round);
            self.accept_bag.extend(round);
        }
        match self.accept_bag.pop_front() {
            Some(AcceptFate::Pause(_)) => AcceptFate::Pause(self.accepts.duration(plan.pause)),
            Some(fate) => fate,
            None => AcceptFate::Serve,
        }
    }

    fn next_fault(&mut self, plan: &ChaosPlan, connection: &ConnectionState) -> Planned {
        if self.fault_bag.is_empty() {
            let mut round = plan.mix.clone();
            self.faults.shuffle(&mut round);
            self.fault_bag.extend(round);
        }
        let fault = self.fault_bag.pop_front().unwrap_or(Fault::Cut(Dir::Up));
        let dir = match fault {
            Fault::Cut(d) | Fault::Stall(d) | Fault::Delay(d) | Fault::Throttle(d) => d,
        };
        let (lo, hi) = plan.frames_between_faults;
        let after = self.faults.range(lo, hi);
        let (blo, bhi) = plan.bytes_past_boundary;
        Planned {
            fault,
            dir,
            at_frame: connection.frames[dir.index()] + after,
            past_boundary: self.faults.range(blo.max(1), bhi.max(1)),
            trigger_at: None,
            delay: self.faults.duration(plan.delay),
            throttle: (plan.throttle_bytes.max(1), plan.throttle_tick),
            slow_frames: self.faults.range(plan.slow_frames.0, plan.slow_frames.1),
        }
    }
}

/// A fault planned on a connection.
#[derive(Debug, Clone, Copy)]
struct Planned {
    fault: Fault,
    dir: Dir,
    /// Armed once this many frames have passed in `dir`.
    at_frame: u64,
    /// Then it hits this many bytes past that boundary.
    past_boundary: u64,
    /// The absolute byte position in `dir` where it hits, once armed.
    trigger_at: Option<u64>,
    delay: Duration,
    throttle: (usize, Duration),
    slow_frames: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Slow {
    Delay(Duration),
    Throttle(usize, Duration),
}

/// A slowdown and the frame count where it ends.
#[derive(Debug, Clone, Copy)]
struct SlowEpisode {
    slow: Slow,
    until_frame: u64,
}

struct Connection {
    state: Mutex<ConnectionState>,
    kill: watch::Sender<bool>,
    injected: Notify,
}

impl Connection {
    fn lock(&self) -> MutexGuard<'_, ConnectionState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct ConnectionState {
    planned: Option<Planned>,
    /// Bytes read from each direction's source.
    pos: [u64; 2],
    /// Frames completed in each direction.
    frames: [u64; 2],
    stalled: [bool; 2],
    cut: bool,
    slow: [Option<SlowEpisode>; 2],
    /// Frames to write into the facilitator-to-client stream at the next boundary.
    inject: VecDeque<Vec<u8>>,
    /// Drop the frame that follows the injection.
    replace_next: bool,
}

// ---- accepting -------------------------------------------------------------------------------------------------

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            () = switched_on(&mut stop) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, _)) = accepted else {
            continue;
        };
        let fate = shared.lock().accept_fate();
        match fate {
            AcceptFate::Serve => {}
            AcceptFate::Close => {
                drop(client);
                continue;
            }
            AcceptFate::Pause(pause) => {
                // Nothing is accepted meanwhile; this client waits in the backlog like the others.
                tokio::select! {
                    biased;
                    () = switched_on(&mut stop) => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
        tasks.spawn(serve(Arc::clone(&shared), client));
    }
    let connections: Vec<Arc<Connection>> = shared.lock().connections.values().cloned().collect();
    for connection in connections {
        connection.kill.send_replace(true);
    }
    while tasks.join_next().await.is_some() {}
}

// ---- the clock -------------------------------------------------------------------------------------------------

/// Ticks while the mode is [`Mode::Clock`]; sleeps on mode changes otherwise.
async fn clock_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let tick = shared.lock().next_tick();
        let wait = async {
            match tick {
                Some(pause) => tokio::time::sleep(pause).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = switched_on(&mut stop) => return,
            // The pace changed, or the clock stopped: draw again.
            () = shared.mode_changed.notified() => continue,
            () = wait => clock_tick(&shared),
        }
    }
}

/// One tick: cut the half-open connections, or arm the next fault of the mix on the open ones.
fn clock_tick(shared: &Shared) {
    let connections: Vec<Arc<Connection>> = {
        let mut state = shared.lock();
        state.counters.clock_ticks += 1;
        state.connections.values().cloned().collect()
    };
    // Lock order everywhere: a connection, then the proxy.
    let mut healthy = Vec::new();
    for connection in &connections {
        let c = connection.lock();
        if c.cut {
            continue;
        }
        if c.stalled.iter().any(|s| *s) {
            // A half-open link stays dead until something notices; with the default peer timeout (40 s) the
            // client would, but a network that flaps every second or two cuts it first.
            shared.lock().counters.stalls_cut += 1;
            connection.kill.send_replace(true);
        } else {
            healthy.push(Arc::clone(connection));
        }
    }
    if connections.is_empty() {
        shared.lock().counters.clock_ticks_idle += 1;
        return;
    }
    if healthy.is_empty() {
        return;
    }
    let Some(planned) = shared.lock().draw_clock_fault() else {
        return;
    };
    for connection in healthy {
        let mut c = connection.lock();
        let mut p = planned;
        p.at_frame += c.frames[p.dir.index()];
        c.planned = Some(p);
    }
}

async fn serve(shared: Arc<Shared>, client: TcpStream) {
    let Ok(upstream) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (kill, _) = watch::channel(false);
    let connection = Arc::new(Connection {
        state: Mutex::new(ConnectionState::default()),
        kill,
        injected: Notify::new(),
    });
    let id = {
        let mut c = connection.lock();
        let mut state = shared.lock();
        c.planned = state.draw_fault(&c);
        if let Some((frame, replace)) = state.next_connection_injection.take() {
            c.inject.push_back(frame);
            c.replace_next = replace;
        }
        let id = state.next_id;
        state.next_id += 1;
        state.connections.insert(id, Arc::clone(&connection));
        id
    };
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let up = Pump::new(Dir::Up, &shared, &connection).run(client_read, upstream_write);
    let down = Pump::new(Dir::Down, &shared, &connection).run(upstream_read, client_write);
    tokio::join!(up, down);
    shared.lock().connections.remove(&id);
    // The halves drop here: both sockets close.
}

// ---- forwarding ------------------------------------------------------------------------------------------------

/// What a chunk read from the source turns into.
enum Out {
    Data { bytes: Vec<u8>, slow: Option<Slow> },
    Cut,
}

/// A segment waiting to be written.
struct Segment {
    release_at: Instant,
    out: Out,
}

/// One direction of one connection.
struct Pump {
    dir: Dir,
    shared: Arc<Shared>,
    connection: Arc<Connection>,
    kill: watch::Receiver<bool>,
    frames: FrameTracker,
    /// Dropping the frame being read (it was replaced by an injection).
    skipping: bool,
}

/// Segments queued before reading stops (backpressure towards the source).
const MAX_QUEUED: usize = 64;

impl Pump {
    fn new(dir: Dir, shared: &Arc<Shared>, connection: &Arc<Connection>) -> Pump {
        Pump {
            dir,
            shared: Arc::clone(shared),
            connection: Arc::clone(connection),
            kill: connection.kill.subscribe(),
            frames: FrameTracker::default(),
            skipping: false,
        }
    }

    async fn run(mut self, mut source: OwnedReadHalf, mut sink: OwnedWriteHalf) {
        let mut buf = vec![0u8; 16 * 1024];
        let mut queue: VecDeque<Segment> = VecDeque::new();
        let mut eof = false;
        loop {
            // Write whatever is due, in order.
            while queue
                .front()
                .is_some_and(|s| s.release_at <= Instant::now())
            {
                let Some(segment) = queue.pop_front() else {
                    break;
                };
                match segment.out {
                    Out::Data { bytes, slow } => {
                        if !self.write(&mut sink, &bytes, slow).await {
                            self.kill_connection();
                            return;
                        }
                    }
                    Out::Cut => {
                        self.kill_connection();
                        return;
                    }
                }
            }
            if eof && queue.is_empty() {
                let (stalled, cut) = {
                    let c = self.connection.lock();
                    (c.stalled[self.dir.index()], c.cut)
                };
                if stalled || cut {
                    // The sender went away on a black-holed path: end the emulation.
                    self.kill_connection();
                } else {
                    let _ = sink.shutdown().await;
                }
                return;
            }
            let next_release = queue.front().map(|s| s.release_at);
            // Every branch is cancel-safe: `changed`-style waits, `notified` (a stored permit), `sleep_until`, and
            // `read` on a TCP half (nothing is consumed unless it returns).
            tokio::select! {
                biased;
                () = switched_on(&mut self.kill) => return,
                () = self.connection.injected.notified(), if self.dir == Dir::Down => {
                    let now = Instant::now();
                    for out in self.process(&[]) {
                        queue.push_back(Segment { release_at: now, out });
                    }
                }
                () = sleep_until_some(next_release), if next_release.is_some() => {}
                read = source.read(&mut buf), if !eof && queue.len() < MAX_QUEUED => match read {
                    Ok(0) => eof = true,
                    Ok(n) => {
                        let now = Instant::now();
                        for out in self.process(&buf[..n]) {
                            let release_at = match &out {
                                Out::Data { slow: Some(Slow::Delay(d)), .. } => now + *d,
                                _ => now,
                            };
                            // Never overtake: a segment leaves no earlier than the one before it.
                            let release_at = queue.back().map_or(release_at, |b| b.release_at.max(release_at));
                            queue.push_back(Segment { release_at, out });
                        }
                    }
                    Err(_) => {
                        self.kill_connection();
                        return;
                    }
                },
            }
        }
    }

    fn kill_connection(&self) {
        self.connection.kill.send_replace(true);
    }

    /// Writes one segment (trickled if throttled); false if the connection is killed or the write fails.
    async fn write(&mut self, sink: &mut OwnedWriteHalf, bytes: &[u8], slow: Option<Slow>) -> bool {
        let write = async {
            match slow {
                Some(Slow::Throttle(per_tick, tick)) => {
                    for piece in bytes.chunks(per_tick) {
                        sink.write_all(piece).await?;
                        tokio::time::sleep(tick).await;
                    }
                    Ok::<(), io::Error>(())
                }
                _ => sink.write_all(bytes).await,
            }
        };
        tokio::select! {
            biased;
            () = switched_on(&mut self.kill) => false,
            written = write => written.is_ok(),
        }
    }

    /// Runs a chunk read from the source through the frame tracker and the connection's faults: what to write,
    /// in order. An empty chunk only gives pending injections a chance.
    fn process(&mut self, chunk: &[u8]) -> Vec<Out> {
        let d = self.dir.index();
        let connection = Arc::clone(&self.connection);
        let mut c = connection.lock();
        let mut out: Vec<Out> = Vec::new();
        let mut rest = chunk;
        loop {
            if c.stalled[d] || c.cut {
                // Black-holed or cut: the rest of the chunk is lost.
                break;
            }
            if self.dir == Dir::Down && self.frames.at_boundary() && !c.inject.is_empty() {
                while let Some(frame) = c.inject.pop_front() {
                    self.shared.lock().counters.injected_frames += 1;
                    emit(&mut out, &frame, None);
                }
                if std::mem::take(&mut c.replace_next) {
                    self.skipping = true;
                }
            }
            let trigger = c
                .planned
                .filter(|p| p.dir == self.dir)
                .and_then(|p| p.trigger_at);
            if trigger == Some(c.pos[d]) {
                if self.fire(&mut c, &mut out) {
                    break;
                }
                continue;
            }
            if rest.is_empty() {
                break;
            }
            let limit = match trigger {
                Some(at) => rest.len().min((at - c.pos[d]) as usize),
                None => rest.len(),
            };
            let (n, unit) = self.frames.step(&rest[..limit]);
            if !self.skipping {
                let slow = c.slow[d].map(|e| e.slow);
                emit(&mut out, &rest[..n], slow);
            }
            c.pos[d] += n as u64;
            rest = &rest[n..];
            if unit != Unit::Nothing {
                if unit == Unit::Frame {
                    self.skipping = false;
                    c.frames[d] += 1;
                }
                let frames = c.frames[d];
                if c.slow[d].is_some_and(|e| frames >= e.until_frame) {
                    c.slow[d] = None;
                }
                let pos = c.pos[d];
                if let Some(p) = c.planned.as_mut()
                    && p.dir == self.dir
                    && p.trigger_at.is_none()
                    && frames >= p.at_frame
                {
                    p.trigger_at = Some(pos + p.past_boundary);
                }
            }
        }
        out
    }

    /// Carries out the planned fault that is due; true if it ends this direction's forwarding.
    fn fire(&mut self, c: &mut ConnectionState, out: &mut Vec<Out>) -> bool {
        let Some(planned) = c.planned.take() else {
            return false;
        };
        let d = self.dir.index();
        let mut state = self.shared.lock();
        match planned.fault {
            Fault::Cut(dir) => {
                match dir {
                    Dir::Up => state.counters.cuts_up += 1,
                    Dir::Down => state.counters.cuts_down += 1,
                }
                if !self.frames.at_boundary() {
                    state.counters.cuts_mid_frame += 1;
                }
                c.cut = true;
                out.push(Out::Cut);
                true
            }
            Fault::Stall(dir) => {
                match dir {
                    Dir::Up => state.counters.stalls_up += 1,
                    Dir::Down => state.counters.stalls_down += 1,
                }
                c.stalled[d] = true;
                true
            }
            Fault::Delay(_) | Fault::Throttle(_) => {
                let slow = if let Fault::Delay(_) = planned.fault {
                    state.counters.delays += 1;
                    Slow::Delay(planned.delay)
                } else {
                    state.counters.throttles += 1;
                    Slow::Throttle(planned.throttle.0, planned.throttle.1)
                };
                c.slow[d] = Some(SlowEpisode {
                    slow,
                    until_frame: c.frames[d] + planned.slow_frames.max(1),
                });
                c.planned = state.draw_fault(c);
                false
            }
        }
    }
}

/// Appends bytes to the output, merging with the previous data segment when the slowdown is the same.
fn emit(out: &mut Vec<Out>, bytes: &[u8], slow: Option<Slow>) {
    if bytes.is_empty() {
        return;
    }
    if let Some(Out::Data {
        bytes: last,
        slow: last_slow,
    }) = out.last_mut()
        && *last_slow == slow
    {
        last.extend_from_slice(bytes);
        return;
    }
    out.push(Out::Data {
        bytes: bytes.to_vec(),
        slow,
    });
}

/// Resolves once the switch is on (or its sender is gone). Cancel-safe: it only looks at the current value.
async fn switched_on(switch: &mut watch::Receiver<bool>) {
    let _ = switch.wait_for(|on| *on).await;
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

// ---- WebSocket framing -----------------------------------------------------------------------------------------

/// What a step of the tracker completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Nothing,
    HttpHead,
    Frame,
}

/// Follows a WebSocket byte stream: the HTTP upgrade head, then frame headers (masked or not) and payloads. Knows
/// where frames begin and end; never looks inside payloads.
#[derive(Debug, Clone)]
enum FrameTracker {
    /// In the HTTP head; how much of the closing CRLFCRLF has been seen.
    Http { matched: u8 },
    /// In a frame header.
    Header {
        buf: [u8; 14],
        have: usize,
        need: usize,
    },
    /// In a payload.
    Payload { remaining: u64 },
}

impl Default for FrameTracker {
    fn default() -> Self {
        FrameTracker::Http { matched: 0 }
    }
}

impl FrameTracker {
    /// Between two frames (after the HTTP head).
    fn at_boundary(&self) -> bool {
        matches!(self, FrameTracker::Header { have: 0, .. })
    }

    /// Consumes bytes up to and including the end of the current unit (HTTP head or frame), or all of `data` if
    /// the unit does not end in it. Consumes at least one byte of non-empty `data`.
    fn step(&mut self, data: &[u8]) -> (usize, Unit) {
        const END: &[u8; 4] = b"\r\n\r\n";
        let mut used = 0;
        while used < data.len() {
            match self {
                FrameTracker::Http { matched } => {
                    let b = data[used];
                    used += 1;
                    *matched = if b == END[*matched as usize] {
                        *matched + 1
                    } else if b == b'\r' {
                        1
                    } else {
                        0
                    };
                    if *matched == 4 {
                        *self = FrameTracker::header();
                        return (used, Unit::HttpHead);
                    }
                }
                FrameTracker::Header { buf, have, need } => {
                    buf[*have] = data[used];
                    *have += 1;
                    used += 1;
                    if *have == 2 {
                        let masked = buf[1] & 0x80 != 0;
                        let extended = match buf[1] & 0x7f {
                            126 => 2,
                            127 => 8,
                            _ => 0,
                        };
                        *need = 2 + extended + if masked { 4 } else { 0 };
                    }
                    if *have == *need {
                        let len = match buf[1] & 0x7f {
                            126 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
                            127 => u64::from_be_bytes([
                                buf[2], buf[3], buf[4], buf[5], buf[6], buf[7], buf[8], buf[9],
                            ]),
                            n => u64::from(n),
                        };
                        if len == 0 {
                            *self = FrameTracker::header();
                            return (used, Unit::Frame);
                        }
                        *self = FrameTracker::Payload { remaining: len };
                    }
                }
                FrameTracker::Payload { remaining } => {
                    let take = (*remaining).min((data.len() - used) as u64);
                    *remaining -= take;
                    used += take as usize;
                    if *remaining == 0 {
                        *self = FrameTracker::header();
                        return (used, Unit::Frame);
                    }
                }
            }
        }
        (used, Unit::Nothing)
    }

    fn header() -> FrameTracker {
        FrameTracker::Header {
            buf: [0; 14],
            have: 0,
            need: 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `data` in pieces of `piece` bytes; returns the units seen with the position each ended at.
    fn units(data: &[u8], piece: usize) -> Vec<(usize, Unit)> {
        let mut tracker = FrameTracker::default();
        let mut seen = Vec::new();
        let mut pos = 0;
        for chunk in data.chunks(piece) {
            let mut rest = chunk;
            while !rest.is_empty() {
                let (n, unit) = tracker.step(rest);
                pos += n;
                rest = &rest[n..];
                if unit != Unit::Nothing {
                    seen.push((pos, unit));
                }
            }
        }
        seen
    }

    #[test]
    fn frame_boundaries_are_found_whatever_the_chunking() {
        let mut stream = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        let head = stream.len();
        let small = server_frame(1, b"hello");
        let medium = server_frame(1, &[b'x'; 300]);
        let large = server_frame(2, &vec![0u8; 70_000]);
        // A masked client frame: mask bit and a 4-byte key.
        let masked = [0x81, 0x83, 1, 2, 3, 4, b'a', b'b', b'c'];
        for frame in [&small[..], &medium[..], &large[..], &masked[..]] {
            stream.extend_from_slice(frame);
        }
        let mut expected = vec![(head, Unit::HttpHead)];
        let mut end = head;
        for len in [small.len(), medium.len(), large.len(), masked.len()] {
            end += len;
            expected.push((end, Unit::Frame));
        }
        for piece in [1, 2, 3, 7, 100, 4096, stream.len()] {
            assert_eq!(units(&stream, piece), expected, "pieces of {piece}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let plan = ChaosPlan::every_kind((10, 50));
        let draw = |seed| {
            let mut schedule = Schedule::new(seed);
            let state = ConnectionState::default();
            (0..40)
                .map(|_| {
                    let p = schedule.next_fault(&plan, &state);
                    (p.fault, p.at_frame, p.past_boundary)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        // Every kind of the mix shows up in every round.
        let first_round: std::collections::HashSet<Fault> =
            draw(7).iter().take(plan.mix.len()).map(|f| f.0).collect();
        assert_eq!(first_round.len(), 8);
    }
}
