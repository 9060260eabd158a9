//! Times buildbroker's mutual-TLS handshake alone (no sockets, no process start): a rustls
//! client presenting a client certificate against `tls::TlsAcceptor`, over an in-memory
//! stream, N times; prints the median and p90 per handshake (client and server together).
//! Certificates come from tests/support/mkcerts.sh (openssl). Used by docs/benchmarks.md:
//!   cargo run --release --example tls_handshake [N]

use std::time::{Duration, Instant};

use buildbroker::config::{TlsClientFiles, TlsServerFiles};
use buildbroker::tls::{TlsAcceptor, TlsConnector};

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(500);
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/mkcerts.sh"
        ))
        .arg(dir.path())
        .arg("bench")
        .status()
        .unwrap();
    assert!(status.success());
    let d = dir.path();
    let acceptor = TlsAcceptor::load(
        &TlsServerFiles {
            cert: d.join("server.pem"),
            key: d.join("server-key.pem"),
            client_ca: d.join("ca.pem"),
        },
        Vec::new(),
    )
    .unwrap();
    let connector = TlsConnector::load(
        &TlsClientFiles {
            ca: d.join("ca.pem"),
            cert: Some(d.join("bench.pem")),
            key: Some(d.join("bench-key.pem")),
            server_name: None,
        },
        "127.0.0.1",
        Vec::new(),
    )
    .unwrap();
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let started = Instant::now();
        let (client, server) = tokio::join!(connector.connect(c), acceptor.accept(s));
        times.push(started.elapsed());
        let (_tls, identity) = server.unwrap();
        assert_eq!(identity, "bench");
        drop(client.unwrap());
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{n} mutual-TLS handshakes (EC P-256, TLS 1.3, in memory): median {:.3} ms, p90 {:.3} ms; load average {}",
        ms(at(0.5)),
        ms(at(0.9)),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}
