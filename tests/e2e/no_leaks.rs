//! The secret's bytes appear nowhere: not in the image, its history, the build cache, the
//! broker's trace-level log or buildx's output.

use std::process::Command;

use sha2_check::sha256_hex;

use crate::harness::*;

mod sha2_check {
    /// SHA-256 via the host's sha256sum, so the test does not trust the crate under test.
    pub fn sha256_hex(data: &[u8]) -> String {
        use std::io::Write;
        let mut child = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(data).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }
}

#[test]
fn secret_bytes_are_not_in_image_history_cache_or_logs() {
    if skip() {
        return;
    }
    let value = unique_secret("leak");
    let broker = Broker::start(BrokerOptions {
        policy: "[secrets.tok]\nsources = [\"env:TOK\"]\nrequired = true\n",
        env: vec![("TOK", &value)],
        rust_log: "trace",
        ..Default::default()
    });
    let tag = format!("buildbroker-test/leak:{}", std::process::id());
    let build = Build::new(format!(
        "FROM {BASE_IMAGE}\nRUN --mount=type=secret,id=tok sha256sum /run/secrets/tok | cut -d' ' -f1 > /hash\n"
    ))
    .tag(&tag)
    .run(&broker);
    build.assert_ok();

    let engine = engine();
    let docker = |args: &[&str]| {
        let out = Command::new("docker")
            .env("DOCKER_HOST", engine)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let saved = docker(&["save", &tag]);
    let history = docker(&["history", "--no-trunc", &tag]);
    let root = String::from_utf8(docker(&["info", "--format", "{{.DockerRootDir}}"])).unwrap();
    docker(&["rmi", &tag]);

    // Positive control: the secret did reach the build (its hash is in the image).
    let expected_hash = sha256_hex(value.as_bytes());
    assert!(
        contains_bytes(&saved, expected_hash.as_bytes()),
        "the image should hold the secret's hash"
    );

    let needle = value.as_bytes();
    assert!(
        !contains_bytes(&saved, needle),
        "secret found in `docker save`"
    );
    assert!(
        !contains_bytes(&history, needle),
        "secret found in `docker history`"
    );
    assert!(
        !contains_bytes(build.log().as_bytes(), needle),
        "secret found in buildx output"
    );
    let log = broker.log();
    assert!(log.contains("TRACE"), "the broker ran at trace level");
    assert!(
        !contains_bytes(log.as_bytes(), needle),
        "secret found in the broker's trace log"
    );
    assert!(
        !contains_bytes(broker.audit().as_bytes(), needle),
        "secret found in the audit log"
    );
    assert!(broker.audit().contains("\"id\":\"tok\""));

    // The engine's own storage (build cache, snapshots, metadata).
    // Other tests build concurrently, so files may vanish under grep (exit 2, "no such
    // file"): what counts is that no file was listed as containing the value.
    let grep = Command::new("grep")
        .args(["-rlFs", "--", &value])
        .arg(root.trim())
        .output()
        .unwrap();
    assert_ne!(
        grep.status.code(),
        Some(0),
        "grep found the secret in the engine's data root"
    );
    assert!(
        grep.stdout.is_empty(),
        "secret found in the engine's data root: {}",
        String::from_utf8_lossy(&grep.stdout)
    );
}

/// A value that is random (from /dev/urandom) and names its source kind, so a copy found in a
/// core image says where it came from even before the report does.
fn random_value(kind: &str) -> String {
    let mut raw = [0u8; 18];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut raw).unwrap();
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    format!("{kind}-{hex}")
}

/// One thing searched for in a core image.
struct Needle {
    /// The source kind and id, for the report.
    kind: String,
    bytes: Vec<u8>,
    /// Copies that are meant to be there: (how many, why). A copy beyond these fails.
    expected: Option<(usize, &'static str)>,
    /// A copy preceded by these bytes is the expected one (e.g. `NAME=` of the environment
    /// block); copies elsewhere are leaks even if the count matches.
    expected_prefix: Option<Vec<u8>>,
}

impl Needle {
    fn secret(kind: impl Into<String>, value: &str) -> Needle {
        Needle {
            kind: kind.into(),
            bytes: value.as_bytes().to_vec(),
            expected: None,
            expected_prefix: None,
        }
    }
}

/// `gcore`s the running broker and returns the core's bytes and path.
fn core_of(broker: &Broker, dir: &std::path::Path) -> (Vec<u8>, std::path::PathBuf) {
    let core_prefix = dir.join("core");
    let out = Command::new("gcore")
        .arg("-o")
        .arg(&core_prefix)
        .arg(broker.pid().to_string())
        .output()
        .expect("gcore (package gdb) must be installed: run tests/testbed/setup.sh");
    let core_path = dir.join(format!("core.{}", broker.pid()));
    assert!(
        core_path.exists(),
        "gcore made no core: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let core = std::fs::read(&core_path).unwrap();
    assert!(
        core.len() > 1_000_000,
        "a real core image ({} bytes)",
        core.len()
    );
    (core, core_path)
}

/// Every readable mapping of the running broker, read through `/proc/PID/mem` into one file:
/// what a reader of the process's memory (root, a debugger) sees, including the pages kept out
/// of core files (`MADV_DONTDUMP`), which `gcore` leaves out. Returns the bytes and the path.
fn memory_of(broker: &Broker, dir: &std::path::Path) -> (Vec<u8>, std::path::PathBuf) {
    const DUMP: &str = r#"
import sys
pid, out = sys.argv[1], sys.argv[2]
with open(f'/proc/{pid}/maps') as maps, open(f'/proc/{pid}/mem', 'rb', 0) as mem, open(out, 'wb') as o:
    for line in maps:
        fields = line.split()
        if not fields[1].startswith('r'):
            continue
        lo, hi = (int(x, 16) for x in fields[0].split('-'))
        try:
            mem.seek(lo)
            o.write(mem.read(hi - lo))
        except (OSError, ValueError, OverflowError):
            pass  # [vvar] and friends cannot be read
"#;
    let path = dir.join(format!("memory.{}", broker.pid()));
    let out = Command::new("python3")
        .arg("-c")
        .arg(DUMP)
        .arg(broker.pid().to_string())
        .arg(&path)
        .output()
        .expect("python3 must be installed");
    assert!(
        out.status.success(),
        "reading the broker's memory: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = std::fs::read(&path).unwrap();
    assert!(
        image.len() > 1_000_000,
        "a real memory image ({} bytes)",
        image.len()
    );
    (image, path)
}

/// Every offset of each needle in the core file, found by Python's `mmap.find` (a debug-built
/// byte loop over a 100 MB core takes minutes; this takes a second, and does not trust the
/// crate under test either).
fn offsets_in(core_path: &std::path::Path, needles: &[Needle]) -> Vec<Vec<usize>> {
    const FIND: &str = r#"
import sys, mmap
f = open(sys.argv[1], 'rb')
m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
for h in sys.argv[2:]:
    n = bytes.fromhex(h)
    found = []
    i = m.find(n)
    while i != -1:
        found.append(i)
        i = m.find(n, i + 1)
    print(' '.join(map(str, found)))
"#;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let out = Command::new("python3")
        .arg("-c")
        .arg(FIND)
        .arg(core_path)
        .args(needles.iter().map(|n| hex(&n.bytes)))
        .output()
        .expect("python3 must be installed");
    assert!(
        out.status.success(),
        "core search: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let found: Vec<Vec<usize>> = text
        .lines()
        .map(|l| l.split_whitespace().map(|o| o.parse().unwrap()).collect())
        .collect();
    assert_eq!(found.len(), needles.len(), "one line per needle: {text}");
    found
}

/// Printable context around a copy: up to 24 bytes before and after it, never the copy itself.
fn context(core: &[u8], at: usize, len: usize) -> String {
    let show = |bytes: &[u8]| -> String {
        bytes
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    (b as char).to_string()
                } else {
                    format!("\\x{b:02x}")
                }
            })
            .collect()
    };
    let before = &core[at.saturating_sub(24)..at];
    let after = &core[(at + len).min(core.len())..(at + len + 24).min(core.len())];
    format!("…{}[secret]{}…", show(before), show(after))
}

/// Searches one core image for every needle; returns one report line per needle and whether
/// any copy was found that should not be there.
fn search_core(
    label: &str,
    core: &[u8],
    core_path: &std::path::Path,
    needles: &[Needle],
) -> (Vec<String>, bool) {
    let mut lines = Vec::new();
    let mut leaked = false;
    for (needle, found) in needles.iter().zip(offsets_in(core_path, needles)) {
        let (allowed, why) = needle.expected.unwrap_or((0, ""));
        // Copies where an expected one may sit (after its prefix, or anywhere when no prefix
        // is known); any beyond the allowed count, and every copy elsewhere, is a leak.
        let (candidates, elsewhere): (Vec<usize>, Vec<usize>) =
            found
                .iter()
                .partition(|&&at| match &needle.expected_prefix {
                    Some(prefix) => core[..at].ends_with(prefix),
                    None => true,
                });
        let mut unexpected = elsewhere;
        if candidates.len() > allowed {
            unexpected.extend(&candidates);
        }
        unexpected.sort_unstable();
        let mut line = format!(
            "[{label}] {}: {} cop{} in the image",
            needle.kind,
            found.len(),
            if found.len() == 1 { "y" } else { "ies" }
        );
        if allowed > 0 {
            line.push_str(&format!(" ({allowed} expected: {why})"));
        }
        for &at in &unexpected {
            leaked = true;
            line.push_str(&format!(
                "\n    LEAK at offset {at:#x}: {}",
                context(core, at, needle.bytes.len())
            ));
        }
        lines.push(line);
    }
    (lines, leaked)
}

/// 32-byte windows of an RSA key's private exponent and first prime, as big-endian bytes (how
/// key files and DER carry them) and byte-reversed (how the `rsa` crate's and ring's
/// little-endian 64-bit limbs hold them in memory), from an unencrypted OpenSSH key file.
fn rsa_private_windows(path: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let key = ssh_key::PrivateKey::read_openssh_file(path).unwrap();
    let pair = key.key_data().rsa().expect("an rsa key");
    let mut windows = Vec::new();
    for (name, value) in [("d", &pair.private.d), ("p", &pair.private.p)] {
        let be = value.as_positive_bytes().unwrap().to_vec();
        let middle = be.len() / 2 - 16;
        let window = be[middle..middle + 32].to_vec();
        let mut reversed = window.clone();
        reversed.reverse();
        windows.push((format!("{name}, big-endian"), window));
        windows.push((format!("{name}, little-endian limbs"), reversed));
    }
    windows
}

/// A new unencrypted key made by the real `ssh-keygen` with `kind` (e.g. `-t rsa -b 3072`) in
/// `dir`, named and commented `name`: its path and its public key line.
fn unencrypted_key(
    dir: &std::path::Path,
    name: &str,
    kind: &[&str],
) -> (std::path::PathBuf, String) {
    let path = dir.join(name);
    let made = Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-C", name])
        .args(kind)
        .arg("-f")
        .arg(&path)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (path, public)
}

/// An ECDSA P-256 key's private scalar from an unencrypted OpenSSH key file, as big-endian
/// bytes (how key files and DER carry it) and byte-reversed (how the `p256` crate's signing
/// key holds it in memory: little-endian 64-bit limbs, not in Montgomery form).
fn p256_private_forms(path: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let key = ssh_key::PrivateKey::read_openssh_file(path).unwrap();
    let ssh_key::private::EcdsaKeypair::NistP256 { private, .. } =
        key.key_data().ecdsa().expect("an ecdsa key")
    else {
        panic!("a P-256 key")
    };
    let be = private.as_slice().to_vec();
    assert_eq!(be.len(), 32);
    let mut le = be.clone();
    le.reverse();
    vec![
        ("d, big-endian".to_string(), be),
        ("d, little-endian limbs".to_string(), le),
    ]
}

/// The ed25519 private scalar (seed) of an unencrypted OpenSSH key file.
fn ed25519_seed(path: &std::path::Path) -> Vec<u8> {
    let key = ssh_key::PrivateKey::read_openssh_file(path).unwrap();
    let pair = key.key_data().ed25519().expect("an ed25519 key").clone();
    pair.private.to_bytes().to_vec()
}

/// design.md §11: no secret bytes in a core image of the broker taken after builds finished,
/// for every source kind. One broker serves every kind but the Secret Service (a second broker,
/// on a private session bus); each value is random and distinct; the Dockerfile only hashes
/// them (the hashes prove each value was served); source files are removed and cached entries
/// left to expire before `gcore`. The report names each kind, how many copies the core holds,
/// and, for each copy that should not be there, its offset and the bytes around it.
#[test]
fn no_source_leaves_a_secret_byte_in_a_core_image_of_the_broker() {
    if skip() {
        return;
    }
    crate::sshbed::require_ssh_bed();
    let dir = tempfile::tempdir().unwrap();
    let mut report = Vec::new();
    let mut leaked = false;
    let t0 = std::time::Instant::now();

    // ---- One broker: env, file, exec, kernel keyring, aws-sm, client, template, held key.
    let v = |k: &str| random_value(k);
    let env_value = v("env");
    let file_value = v("file");
    let file_cached_value = v("filecached");
    let exec_value = v("exec");
    let exec_cached_value = v("execcached");
    let kernel_value = v("kernel");
    let aws_string_value = v("awsstring");
    let aws_cached_value = v("awscached");
    let aws_field_value = v("awsfield");
    let aws_binary_value = v("awsbinary");
    let client_value = v("client");
    let template_input = v("tmplinput");
    let rendered = format!("machine h password {template_input}\n");

    let file = write_file(dir.path(), "file", file_value.as_bytes());
    let file_cached = write_file(dir.path(), "filecached", file_cached_value.as_bytes());
    let exec_file = write_file(dir.path(), "exec", exec_value.as_bytes());
    let exec_cached_file = write_file(dir.path(), "execcached", exec_cached_value.as_bytes());
    let template_file = write_file(dir.path(), "tmpl", template_input.as_bytes());
    let client_file = write_file(dir.path(), "client", client_value.as_bytes());
    let service = crate::kernel_keyring::unique("core");
    let kernel_key = crate::kernel_keyring::KernelKey::add(&service, "k", kernel_value.as_bytes());

    let moto = crate::moto::Moto::start();
    moto.create_string("core/string", &aws_string_value);
    moto.create_string("core/cached", &aws_cached_value);
    moto.create_string(
        "core/json",
        &format!(r#"{{"username": "app", "password": "{aws_field_value}"}}"#),
    );
    moto.create_binary("core/binary", aws_binary_value.as_bytes());

    let key = crate::sshbed::Key::new(dir.path(), "corekey", "");
    let seed = ed25519_seed(&key.path);
    let (rsa_key, rsa_public) = unencrypted_key(dir.path(), "rsakey", &["-t", "rsa", "-b", "3072"]);
    let rsa_windows = rsa_private_windows(&rsa_key);
    // (1 in 512 P-256 keys has a scalar too short for ssh-key 0.6 in OpenSSH format; the
    // broker refuses those with advice, so the next one is taken.)
    let (ecdsa_key, ecdsa_public) = (0..20)
        .map(|i| {
            unencrypted_key(
                dir.path(),
                &format!("ecdsakey{i}"),
                &["-t", "ecdsa", "-b", "256"],
            )
        })
        .find(|(path, _)| ssh_key::PrivateKey::read_openssh_file(path).is_ok())
        .expect("a P-256 key ssh-key can read in 20");
    let ecdsa_forms = p256_private_forms(&ecdsa_key);
    let key_text = std::fs::read_to_string(&key.path).unwrap();
    let key_lines: Vec<String> = key_text
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 32)
        .map(str::to_string)
        .collect();

    let endpoint = moto.endpoint();
    let policy = format!(
        "[keyring]\nbackend = \"kernel\"\n\
         [secrets.env_tok]\nsources = [\"env:BB_CORE_ENV\"]\nrequired = true\n\
         [secrets.file_tok]\nsources = [\"file:{file}\"]\nrequired = true\n\
         [secrets.file_cached]\nsources = [\"file:{file_cached}\"]\nrequired = true\ncache_ttl = \"100ms\"\n\
         [secrets.exec_tok]\nsources = [\"exec:/bin/cat {exec}\"]\nrequired = true\n\
         [secrets.exec_cached]\nsources = [\"exec:/bin/cat {exec_cached}\"]\nrequired = true\ncache_ttl = \"100ms\"\n\
         [secrets.kernel_tok]\nsources = [\"keyring:{service}/k\"]\nrequired = true\n\
         [secrets.aws_string]\nsources = [\"aws-sm:core/string\"]\nrequired = true\n\
         [secrets.aws_cached]\nsources = [\"aws-sm:core/cached\"]\nrequired = true\ncache_ttl = \"100ms\"\n\
         [secrets.aws_field]\nsources = [\"aws-sm:core/json#password\"]\nrequired = true\n\
         [secrets.aws_binary]\nsources = [\"aws-sm:core/binary\"]\nrequired = true\n\
         [secrets.tmpl_input]\nsources = [\"file:{tmpl}\"]\n\
         [secrets.rendered]\ntemplate = \"machine h password {{{{tmpl_input}}}}\\n\"\nrequired = true\n\
         [secrets.minted]\nsources = [\"aws-credentials:?role_arn=arn:aws:iam::123456789012:role/core&duration=900\"]\nrequired = true\n\
         [ssh.deploy]\nprivate_keys = [\"file:{key}\", \"file:{rsa_key}\", \"file:{ecdsa_key}\"]\n",
        file = file.display(),
        file_cached = file_cached.display(),
        exec = exec_file.display(),
        exec_cached = exec_cached_file.display(),
        tmpl = template_file.display(),
        key = key.path.display(),
        rsa_key = rsa_key.display(),
        ecdsa_key = ecdsa_key.display(),
    );
    eprintln!("{:?}: setup done", t0.elapsed());
    let broker = Broker::start(BrokerOptions {
        policy: &policy,
        env: vec![
            ("BB_CORE_ENV", &env_value),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", crate::moto::REGION),
            ("AWS_ENDPOINT_URL", &endpoint),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
        ..Default::default()
    });

    let served: Vec<(&str, &str)> = vec![
        ("env_tok", &env_value),
        ("file_tok", &file_value),
        ("file_cached", &file_cached_value),
        ("exec_tok", &exec_value),
        ("exec_cached", &exec_cached_value),
        ("kernel_tok", &kernel_value),
        ("aws_string", &aws_string_value),
        ("aws_cached", &aws_cached_value),
        ("aws_field", &aws_field_value),
        ("aws_binary", &aws_binary_value),
        ("client_tok", &client_value),
        ("rendered", &rendered),
    ];
    // The held key signs inside the build: `ssh-add -T` asks the agent for a signature. This
    // build goes first: a later build's allocations would overwrite freed copies of the
    // secrets and hide them from the search.
    let ssh_build = Build::new(format!(
        "FROM {SSH_IMAGE}\nCOPY corekey.pub /k.pub\n\
         COPY rsakey.pub /r.pub\n\
         COPY ecdsa.pub /e.pub\n\
         RUN --mount=type=ssh,id=deploy,required=true mkdir /o && (ssh-add -T /k.pub && echo data > /tmp/d && ssh-keygen -Y sign -f /r.pub -n core /tmp/d && ssh-keygen -Y sign -f /e.pub -n core /tmp/d) > /o/t 2>&1; echo $? > /o/rc\n\
         FROM scratch\nCOPY --from=0 /o /\n"
    ))
    .file("corekey.pub", key.public.clone())
    .file("rsakey.pub", rsa_public.clone())
    .file("ecdsa.pub", ecdsa_public.clone())
    .run(&broker);
    ssh_build.assert_ok();
    assert_eq!(
        ssh_build.text("rc").trim(),
        "0",
        "ssh-add -T through the held key: {}",
        ssh_build.text("t")
    );

    eprintln!("{:?}: ssh build done", t0.elapsed());
    let mounts: String = served
        .iter()
        .map(|(id, _)| format!("--mount=type=secret,id={id},required=true "))
        .collect::<String>()
        // The minted credential is not known in advance: the build exports it, so the
        // search can look for its secret key and token.
        + "--mount=type=secret,id=minted,required=true ";
    let hashes: String = served
        .iter()
        .map(|(id, _)| format!("sha256sum /run/secrets/{id} | cut -d' ' -f1 > /o/{id} && "))
        .collect();
    let build = Build::new(format!(
        "FROM {BASE_IMAGE}\nRUN {mounts}mkdir /o && {hashes}cp /run/secrets/minted /o/minted\nFROM scratch\nCOPY --from=0 /o /\n"
    ))
    .arg(format!("--secret=id=client_tok,src={}", client_file.display()))
    .run(&broker);
    build.assert_ok();
    for (id, value) in &served {
        assert_eq!(
            build.text(id).trim(),
            sha256_hex(value.as_bytes()),
            "{id}: the value reached the build"
        );
    }
    eprintln!("{:?}: secrets build done", t0.elapsed());
    let minted = build.text("minted");
    let minted_field = |name: &str| {
        minted
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim_start_matches([' ', '=']).to_string())
            .unwrap_or_else(|| panic!("the minted credentials file has no {name}"))
    };
    let minted_secret = minted_field("aws_secret_access_key");
    let minted_token = minted_field("aws_session_token");
    for f in [
        &file,
        &file_cached,
        &exec_file,
        &exec_cached_file,
        &template_file,
        &client_file,
    ] {
        std::fs::remove_file(f).unwrap();
    }
    drop(kernel_key);
    // Cached entries expire after 100 ms and the 5 s sweep drops them.
    std::thread::sleep(std::time::Duration::from_secs(6));
    let (core, core_path) = core_of(&broker, dir.path());
    // Positive control: the core holds the broker's memory (the policy text names the file).
    assert!(
        contains_bytes(&core, file.display().to_string().as_bytes()),
        "the core should contain the policy's file path"
    );
    eprintln!("{:?}: core taken", t0.elapsed());
    let mut needles = vec![
        Needle {
            expected: Some((1, "the process environment block, for the daemon's life")),
            expected_prefix: Some(b"BB_CORE_ENV=".to_vec()),
            ..Needle::secret("env: (env_tok)", &env_value)
        },
        Needle::secret("file: (file_tok)", &file_value),
        Needle::secret("file: cached (file_cached)", &file_cached_value),
        Needle::secret("exec: (exec_tok)", &exec_value),
        Needle::secret("exec: cached (exec_cached)", &exec_cached_value),
        Needle::secret("keyring: kernel (kernel_tok)", &kernel_value),
        Needle::secret("aws-sm: string (aws_string)", &aws_string_value),
        Needle::secret("aws-sm: string cached (aws_cached)", &aws_cached_value),
        Needle::secret("aws-sm: JSON #field (aws_field)", &aws_field_value),
        Needle::secret("aws-sm: binary (aws_binary)", &aws_binary_value),
        Needle::secret("client (client_tok)", &client_value),
        Needle::secret("template: rendered (rendered)", &rendered),
        Needle::secret("template: its input (tmpl_input)", &template_input),
        Needle::secret(
            "aws-credentials: secret access key (minted)",
            &minted_secret,
        ),
        Needle::secret("aws-credentials: session token (minted)", &minted_token),
        Needle {
            kind: "ssh held key: ed25519 private scalar".into(),
            bytes: seed.clone(),
            expected: Some((1, "the signing key the broker holds until reload")),
            expected_prefix: None,
        },
    ];
    // The held RSA key signs through ring (rsa-sha2-512, `ssh-keygen -Y sign`) and is also
    // kept by the `rsa` crate (SHA-1, other sizes): its numbers are held in memory as
    // little-endian limbs, d once (the `rsa` crate's key; ring keeps none), p twice (both
    // keys), and never as the key file's or a DER's big-endian bytes.
    for (kind, window) in &rsa_windows {
        let expected = match kind.as_str() {
            "d, little-endian limbs" => Some((1, "the rsa crate's key, held until reload")),
            "p, little-endian limbs" => {
                Some((2, "the rsa crate's key and ring's, held until reload"))
            }
            _ => None,
        };
        needles.push(Needle {
            kind: format!("ssh held key: rsa {kind}"),
            bytes: window.clone(),
            expected,
            expected_prefix: None,
        });
    }
    // The held ECDSA P-256 key signs on a key-work thread (`ssh-keygen -Y sign` above): its
    // scalar is held once, as the signing key's little-endian limbs, and never as the key
    // file's big-endian bytes (RFC 6979's nonce derivation takes those, on a scrubbed stack).
    for (kind, form) in &ecdsa_forms {
        let expected = (kind == "d, little-endian limbs")
            .then_some((1, "the p256 signing key, held until reload"));
        needles.push(Needle {
            kind: format!("ssh held key: ecdsa p256 {kind}"),
            bytes: form.clone(),
            expected,
            expected_prefix: None,
        });
    }
    for (i, line) in key_lines.iter().enumerate() {
        needles.push(Needle::secret(
            format!("ssh held key: key file line {}", i + 2),
            line,
        ));
    }
    let (lines, any) = search_core("broker", &core, &core_path, &needles);
    report.extend(lines);
    leaked |= any;
    // The env value's expected copy is the positive control that the search finds values.
    assert!(
        report[0].contains("env: (env_tok): 1 copy"),
        "the environment block's copy of the env: value should be in the core: {}",
        report[0]
    );
    std::fs::remove_file(core_path).unwrap();
    drop(core);
    // The core leaves secret pages out (MADV_DONTDUMP), so a value left in one would not show
    // there: search the whole live memory too.
    let (memory, memory_path) = memory_of(&broker, dir.path());
    let (lines, any) = search_core("broker memory", &memory, &memory_path, &needles);
    // Positive control for the RSA and ECDSA forms: the held keys' numbers are found where
    // they are held (so a search that found no copy at all would not pass for a clean image).
    for held in [
        "rsa d, little-endian limbs: 1 copy",
        "rsa p, little-endian limbs: 2 copies",
        "ecdsa p256 d, little-endian limbs: 1 copy",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(held)),
            "the broker's memory should hold the RSA key as {held}:\n{}",
            lines.join("\n")
        );
    }
    report.extend(lines);
    leaked |= any;
    std::fs::remove_file(memory_path).unwrap();
    drop(memory);
    drop(broker);
    drop(moto);

    eprintln!("{:?}: first core searched", t0.elapsed());
    // ---- A second broker on a private session bus: the Secret Service.
    let bed = crate::secret_service::SecretServiceBed::start();
    let ss_value = v("secretservice");
    bed.secret_tool_store("buildbroker-core", "tok", ss_value.as_bytes());
    let broker = Broker::start(BrokerOptions {
        policy: "[keyring]\nbackend = \"secret-service\"\n\
                 [secrets.ss_tok]\nsources = [\"keyring:buildbroker-core/tok\"]\nrequired = true\n",
        env: vec![("DBUS_SESSION_BUS_ADDRESS", &bed.address)],
        ..Default::default()
    });
    let build = Build::new(format!(
        "FROM {BASE_IMAGE}\nRUN --mount=type=secret,id=ss_tok,required=true sha256sum /run/secrets/ss_tok | cut -d' ' -f1 > /h\nFROM scratch\nCOPY --from=0 /h /\n"
    ))
    .run(&broker);
    build.assert_ok();
    assert_eq!(build.text("h").trim(), sha256_hex(ss_value.as_bytes()));
    let (core, core_path) = core_of(&broker, dir.path());
    let (lines, any) = search_core(
        "secret-service broker",
        &core,
        &core_path,
        &[Needle::secret(
            "keyring: Secret Service (ss_tok)",
            &ss_value,
        )],
    );
    report.extend(lines);
    leaked |= any;
    let (memory, memory_path) = memory_of(&broker, dir.path());
    let (lines, any) = search_core(
        "secret-service broker memory",
        &memory,
        &memory_path,
        &[Needle::secret(
            "keyring: Secret Service (ss_tok)",
            &ss_value,
        )],
    );
    report.extend(lines);
    leaked |= any;

    let report = report.join("\n");
    eprintln!("core-image report:\n{report}");
    assert!(
        !leaked,
        "secret bytes found in a core image of the broker:\n{report}"
    );
}

/// A value the broker holds (cached for ten minutes) is in its memory, in a page of its own,
/// and yet not in a core image of it: secret pages are `MADV_DONTDUMP`. The memory read is the
/// positive control (the value really is held, and the search would find it).
#[test]
fn a_held_value_is_in_memory_but_not_in_a_core_image() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let value = random_value("held");
    let file = write_file(dir.path(), "held", value.as_bytes());
    let policy = format!(
        "[secrets.held]\nsources = [\"file:{}\"]\nrequired = true\ncache_ttl = \"10m\"\n",
        file.display()
    );
    let broker = Broker::start(BrokerOptions {
        policy: &policy,
        ..Default::default()
    });
    let build = Build::new(format!(
        "FROM {BASE_IMAGE}\nRUN --mount=type=secret,id=held,required=true sha256sum /run/secrets/held | cut -d' ' -f1 > /h\nFROM scratch\nCOPY --from=0 /h /\n"
    ))
    .run(&broker);
    build.assert_ok();
    assert_eq!(build.text("h").trim(), sha256_hex(value.as_bytes()));
    // Only the cache holds it now: the file is gone, the session closed.
    std::fs::remove_file(&file).unwrap();
    let needle = [Needle::secret("file: cached for 10m (held)", &value)];

    let (memory, memory_path) = memory_of(&broker, dir.path());
    let in_memory = offsets_in(&memory_path, &needle).remove(0);
    assert!(
        !in_memory.is_empty(),
        "the cached value should be in the broker's memory (the control failed)"
    );
    drop(memory);
    let (core, core_path) = core_of(&broker, dir.path());
    let (lines, leaked) = search_core("broker", &core, &core_path, &needle);
    assert!(
        !leaked,
        "a held value reached a core image ({} cop{} in memory):\n{}",
        in_memory.len(),
        if in_memory.len() == 1 { "y" } else { "ies" },
        lines.join("\n")
    );
}
