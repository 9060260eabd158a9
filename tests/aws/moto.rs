//! A real `moto_server` (design.md §10) on a free loopback port, started per test, and the AWS SDK
//! client that seeds it. moto comes from tests/testbed/setup.sh (`TESTBED_MOTO_SERVER`); a test
//! fails, never skips, when it is missing.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_secretsmanager::primitives::Blob;
use aws_smithy_http_client::tls::Provider;
use aws_smithy_http_client::tls::rustls_provider::CryptoMode;

/// The region every test seeds and reads (moto keeps regions apart, as AWS does).
pub const REGION: &str = "us-east-1";

/// The moto_server the test bed installed. Panics with the fix when it is not there.
pub fn moto_server() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = std::env::var("TESTBED_MOTO_SERVER").ok().or_else(|| {
            std::fs::read_to_string("/run/buildbroker-testbed/env").ok().and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("TESTBED_MOTO_SERVER=").map(|v| v.trim().to_string()))
            })
        });
        let path = PathBuf::from(path.unwrap_or_else(|| {
            panic!("moto is not installed: no TESTBED_MOTO_SERVER and none in /run/buildbroker-testbed/env; run `bash tests/testbed/setup.sh` (tests/run.sh does)")
        }));
        assert!(
            path.is_file(),
            "{} does not exist; run `bash tests/testbed/setup.sh` to install moto",
            path.display()
        );
        path
    })
}

/// One running moto_server, stopped when dropped.
pub struct Moto {
    pub port: u16,
    child: Option<Child>,
    log: tempfile::NamedTempFile,
}

impl Moto {
    pub fn start() -> Moto {
        Moto::start_with(&[])
    }

    /// moto with IAM enforcement from the (`count`+1)th request on: the first `count` calls
    /// (seeding) are let through, everything after is checked against IAM policies.
    pub fn start_enforcing_iam_after(count: u32) -> Moto {
        Moto::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", &count.to_string())])
    }

    fn start_with(env: &[(&str, &str)]) -> Moto {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = Command::new(moto_server());
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start moto_server");
        let mut moto = Moto {
            port,
            child: Some(child),
            log,
        };
        moto.wait_ready();
        moto
    }

    /// Waits until the port accepts connections (a TCP probe, so it is not counted as an AWS
    /// request by INITIAL_NO_AUTH_ACTION_COUNT).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "moto_server exited with {status} before it listened:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "moto_server not listening after 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// How many API requests moto has answered (its access log has one line per request).
    pub fn requests(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("POST / HTTP/1.1"))
            .count()
    }

    /// Kills moto now (the "server died mid-run" case).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// An SDK client with moto's fake static credentials, for seeding.
    pub fn client(&self) -> Client {
        self.client_in(REGION)
    }

    pub fn client_in(&self, region: &str) -> Client {
        let config = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
            .region(Region::new(region.to_string()))
            .endpoint_url(self.endpoint())
            .http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(Provider::Rustls(CryptoMode::Ring))
                    .build_https(),
            )
            .build();
        Client::from_conf(config)
    }

    /// Creates a string secret; returns its version id.
    pub fn create_string(&self, name: &str, value: &str) -> String {
        let client = self.client();
        let out = block_on(
            client
                .create_secret()
                .name(name)
                .secret_string(value)
                .send(),
        )
        .unwrap_or_else(|e| panic!("create_secret {name}: {e:?}"));
        out.version_id.expect("moto returns a version id")
    }

    pub fn create_binary(&self, name: &str, value: &[u8]) {
        let client = self.client();
        block_on(
            client
                .create_secret()
                .name(name)
                .secret_binary(Blob::new(value))
                .send(),
        )
        .unwrap_or_else(|e| panic!("create_secret {name}: {e:?}"));
    }

    /// Stores a new AWSCURRENT version (the old one becomes AWSPREVIOUS); returns its id.
    pub fn put_string(&self, name: &str, value: &str) -> String {
        let client = self.client();
        let out = block_on(
            client
                .put_secret_value()
                .secret_id(name)
                .secret_string(value)
                .send(),
        )
        .unwrap_or_else(|e| panic!("put_secret_value {name}: {e:?}"));
        out.version_id.expect("moto returns a version id")
    }

    /// Calls moto's IAM API (query protocol) before IAM enforcement begins; returns the XML.
    /// moto picks the service from the credential scope, which it does not verify then.
    pub fn iam(&self, form: &str) -> String {
        let body = format!("{form}&Version=2010-05-08");
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            stream,
            "POST / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=testing/20240101/{REGION}/iam/aws4_request, SignedHeaders=host, Signature=0\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "IAM {form}: {response}"
        );
        response
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("---- moto_server log ----\n{}", self.log());
        }
    }
}

/// The text of the first `<tag>…</tag>` in `xml`.
pub fn xml_text<'x>(xml: &'x str, tag: &str) -> &'x str {
    let open = format!("<{tag}>");
    let start = xml
        .find(&open)
        .unwrap_or_else(|| panic!("no <{tag}> in {xml}"))
        + open.len();
    let end = start + xml[start..].find('<').unwrap();
    &xml[start..end]
}

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}
