//! The metrics listener out of file descriptors: `accept` fails with EMFILE while connections wait in its backlog.
//! It must back off (100 ms doubling to 1 s) instead of spinning on the error, and serve again once descriptors
//! are free. Its own test binary: it lowers this process's descriptor limit.
#![cfg(feature = "ops")]

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use facilitator_client::ops::{HttpLimits, HttpServer, Response, Routes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn open_fds() -> libc::rlim_t {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as libc::rlim_t)
}

fn nofile() -> libc::rlimit {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(rc, 0, "getrlimit");
    limit
}

fn set_soft_nofile(soft: libc::rlim_t) {
    let mut limit = nofile();
    limit.rlim_cur = soft;
    // SAFETY: setrlimit reads the struct we own; lowering the soft limit is always allowed.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(rc, 0, "setrlimit");
}

#[tokio::test]
async fn out_of_file_descriptors_the_listener_backs_off_and_recovers() {
    let limits = HttpLimits {
        header_timeout: Duration::from_millis(500),
        ..HttpLimits::default()
    };
    let routes = Routes::new().get("/metrics", || Response::text(200, "ok\n"));
    let server = HttpServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), routes, limits)
        .await
        .expect("bind");
    let addr = server.local_addr().expect("addr");
    let stats = server.stats();
    tokio::spawn(server.run());
    let original = nofile();

    // Leave room for a handful of descriptors, then use them all up with connections: the last ones wait in the
    // listener's backlog with no descriptor left for `accept`.
    set_soft_nofile(open_fds() + 12);
    let mut clients = Vec::new();
    while let Ok(Ok(stream)) =
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await
    {
        clients.push(stream);
        // Let the server take what it can.
        tokio::task::yield_now().await;
    }
    assert!(!clients.is_empty(), "no connection could be made at all");
    // Give the server time to hit EMFILE, then watch it for two seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.accept_errors.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "accept never failed: {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let errors_before = stats.accept_errors.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let errors_in_2s = stats.accept_errors.load(Ordering::Relaxed) - errors_before;
    // Backing off 100, 200, 400, 800, 1000 ms: a handful of attempts, where a spin would make many thousands.
    assert!(
        errors_in_2s <= 10,
        "{errors_in_2s} accept errors in 2 s: the listener spins"
    );
    assert!(errors_in_2s >= 1, "the listener stopped trying to accept");

    // Descriptors back: it accepts again and serves.
    drop(clients);
    set_soft_nofile(original.rlim_cur);
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_string(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(20));
}
