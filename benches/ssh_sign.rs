//! SSH signatures side by side (design.md §11: through the broker's in-memory key at least as
//! fast as OpenSSH's ssh-agent; through a filtered upstream agent ≤ 1.2× direct latency).
//!
//! Three agents, one ed25519 key, one client:
//!
//! - (a) OpenSSH's `ssh-agent` holding the key, asked directly;
//! - (b) buildbroker's filtered upstream: the real `buildbroker` binary's standalone socket for
//!   an id whose `agent` is that same ssh-agent;
//! - (c) buildbroker-held: the real binary's socket for an id with the key in `private_keys`.
//!
//! The client is ssh-agent-lib's blocking client over a unix socket, identical for all three;
//! each sign request carries a 150-byte payload (the size of an ssh user-auth request). The
//! daemon runs as in production: audit log file on, log level info. Rounds alternate between
//! the three so machine noise falls on all of them alike.
//!
//! `SSH_SIGN_KEY=rsa` uses an RSA-3072 key (ssh-keygen's default size) and rsa-sha2-256
//! instead, `ecdsa256` / `ecdsa384` / `ecdsa521` an ECDSA key on that curve: the held key's private-key
//! operation then runs on a thread of its own in the broker (`secret::on_own_thread`), so
//! this measures that hop too. RSA rounds are a tenth as long, P-384 ones a third, P-521 ones a quarter.
//!
//! Run: `cargo bench --bench ssh_sign` (criterion medians, then a percentile and throughput
//! summary on stdout for docs/benchmarks.md).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use ssh_agent_lib::blocking::Client;
use ssh_agent_lib::proto::SignRequest;
use ssh_key::public::KeyData;

/// The key the three agents sign with.
#[derive(Clone, Copy)]
struct KeyKind {
    name: &'static str,
    keygen: &'static [&'static str],
    /// The sign request's flags (`SSH_AGENT_RSA_SHA2_256` for rsa).
    flags: u32,
    /// Signatures per round and per throughput client, as a divisor of the ed25519 counts.
    slower: usize,
}

/// The keys `SSH_SIGN_KEY` names (name, ssh-keygen flags, sign flags, slower); the first is
/// the default.
const KEY_KINDS: [KeyKind; 5] = [
    KeyKind::new("ed25519", &["-t", "ed25519"], 0, 1),
    KeyKind::new("rsa", &["-t", "rsa", "-b", "3072"], 2, 10),
    KeyKind::new("ecdsa256", &["-t", "ecdsa", "-b", "256"], 0, 1),
    KeyKind::new("ecdsa384", &["-t", "ecdsa", "-b", "384"], 0, 3),
    // PKCS#8: ssh-key cannot read about a quarter of the OpenSSH-format P-521 keys.
    KeyKind::new(
        "ecdsa521",
        &["-t", "ecdsa", "-b", "521", "-m", "PKCS8"],
        0,
        4,
    ),
];

impl KeyKind {
    const fn new(
        name: &'static str,
        keygen: &'static [&'static str],
        flags: u32,
        slower: usize,
    ) -> KeyKind {
        KeyKind {
            name,
            keygen,
            flags,
            slower,
        }
    }
}

fn key_kind() -> KeyKind {
    let Ok(wanted) = std::env::var("SSH_SIGN_KEY") else {
        return KEY_KINDS[0];
    };
    KEY_KINDS
        .into_iter()
        .find(|kind| kind.name == wanted)
        .unwrap_or_else(|| {
            let names: Vec<&str> = KEY_KINDS.iter().map(|kind| kind.name).collect();
            panic!(
                "SSH_SIGN_KEY={wanted}: expected one of {}",
                names.join(", ")
            )
        })
}

struct Bed {
    _dir: tempfile::TempDir,
    agent: Child,
    broker: Child,
    key: KeyData,
    kind: KeyKind,
    targets: [(&'static str, PathBuf); 3],
}

impl Drop for Bed {
    fn drop(&mut self) {
        for child in [&mut self.agent, &mut self.broker] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start() -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let kind = key_kind();
    let key_path = d.join("id_bench");
    let ok = Command::new("ssh-keygen")
        .args(kind.keygen)
        .args(["-q", "-N", "", "-C", "bench", "-f"])
        .arg(&key_path)
        .status()
        .expect("ssh-keygen (openssh-client)");
    assert!(ok.success());
    let public = std::fs::read_to_string(key_path.with_extension("pub")).unwrap();
    let public = ssh_key::PublicKey::from_openssh(public.trim()).unwrap();
    let fingerprint = public.fingerprint(ssh_key::HashAlg::Sha256);

    let agent_sock = d.join("agent.sock");
    let agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&agent_sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh-agent");
    wait_for(&agent_sock);
    let ok = Command::new("ssh-add")
        .arg("-q")
        .arg(&key_path)
        .env("SSH_AUTH_SOCK", &agent_sock)
        .status()
        .unwrap();
    assert!(ok.success());

    let policy = format!(
        "[server]\nlisten = [\"unix://{d}/docker.sock\"]\nupstream = \"unix:///var/run/docker.sock\"\n\
         audit_log = \"{d}/audit.jsonl\"\n\
         [ssh.upstream]\nagent = \"{d}/agent.sock\"\nkeys = [\"{fingerprint}\"]\nsocket = \"{d}/upstream.sock\"\n\
         [ssh.held]\nprivate_keys = [\"file:{d}/id_bench\"]\nsocket = \"{d}/held.sock\"\n",
        d = d.display()
    );
    std::fs::write(d.join("policy.toml"), policy).unwrap();
    let broker = Command::new(env!("CARGO_BIN_EXE_buildbroker"))
        .args(["serve", "--config"])
        .arg(d.join("policy.toml"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("broker.log")).unwrap())
        .spawn()
        .unwrap();
    wait_for(&d.join("held.sock"));
    wait_for(&d.join("upstream.sock"));
    Bed {
        targets: [
            ("a_openssh_agent", agent_sock),
            ("b_broker_upstream", d.join("upstream.sock")),
            ("c_broker_held", d.join("held.sock")),
        ],
        _dir: dir,
        agent,
        broker,
        key: public.key_data().clone(),
        kind,
    }
}

/// A connected client that has listed the agent's keys once, as ssh does before signing.
fn client(socket: &Path) -> Client<UnixStream> {
    let mut c = Client::new(UnixStream::connect(socket).unwrap());
    assert_eq!(c.request_identities().unwrap().len(), 1);
    c
}

fn sign(c: &mut Client<UnixStream>, key: &KeyData, flags: u32) {
    let request = SignRequest {
        credential: key.clone().into(),
        data: vec![0x5a; 150],
        flags,
    };
    c.sign(request).expect("signature");
}

fn bench_sign(c: &mut Criterion) {
    let bed = start();
    let mut group = c.benchmark_group(format!("ssh_sign_{}", bed.kind.name));
    let flags = bed.kind.flags;
    for (name, socket) in &bed.targets {
        let mut client = client(socket);
        group.bench_function(*name, |b| b.iter(|| sign(&mut client, &bed.key, flags)));
    }
    group.finish();
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// p50/p99 of sequential signatures on one connection, and signatures/s with 4 connections
/// signing at once; rounds alternate between the three agents.
fn summary() {
    let bed = start();
    const ROUNDS: usize = 6;
    let (flags, per_round) = (bed.kind.flags, 2_000 / bed.kind.slower);
    let per_client = 1_000 / bed.kind.slower;
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); 3];
    let mut clients: Vec<_> = bed.targets.iter().map(|(_, s)| client(s)).collect();
    for c in clients.iter_mut() {
        for _ in 0..500 / bed.kind.slower {
            sign(c, &bed.key, flags);
        }
    }
    for _ in 0..ROUNDS {
        for (i, c) in clients.iter_mut().enumerate() {
            for _ in 0..per_round {
                let t = Instant::now();
                sign(c, &bed.key, flags);
                samples[i].push(t.elapsed());
            }
        }
    }
    let mut throughput = [0f64; 3];
    for _ in 0..3 {
        for (i, (_, socket)) in bed.targets.iter().enumerate() {
            let start = Instant::now();
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let socket = socket.clone();
                    let key = bed.key.clone();
                    std::thread::spawn(move || {
                        let mut c = client(&socket);
                        for _ in 0..per_client {
                            sign(&mut c, &key, flags);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            throughput[i] += (4 * per_client) as f64 / start.elapsed().as_secs_f64() / 3.0;
        }
    }
    println!(
        "\nSSH {} signatures over a unix socket ({ROUNDS}×{per_round} sequential per agent, interleaved):",
        bed.kind.name
    );
    let mut p50s = [Duration::ZERO; 3];
    for (i, (name, _)) in bed.targets.iter().enumerate() {
        let s = &mut samples[i];
        s.sort();
        p50s[i] = percentile(s, 0.50);
        let mean = s.iter().sum::<Duration>().as_secs_f64() / s.len() as f64;
        println!(
            "  {name:<18} p50 {:>6.1} µs   p99 {:>6.1} µs   {:>7.0} sigs/s sequential   {:>7.0} sigs/s (4 connections)",
            p50s[i].as_secs_f64() * 1e6,
            percentile(s, 0.99).as_secs_f64() * 1e6,
            1.0 / mean,
            throughput[i],
        );
    }
    println!(
        "  p50 ratios: upstream/direct {:.2} (target ≤ 1.20), held/direct {:.2} (target ≤ 1.00)",
        p50s[1].as_secs_f64() / p50s[0].as_secs_f64(),
        p50s[2].as_secs_f64() / p50s[0].as_secs_f64(),
    );
}

criterion_group!(benches, bench_sign);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
