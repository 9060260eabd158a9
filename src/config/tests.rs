use super::*;

fn env() -> HostEnv {
    HostEnv {
        euid: 1000,
        home: Some("/home/u".into()),
        xdg_runtime_dir: Some("/run/user/1000".into()),
        ..HostEnv::default()
    }
}

fn parse(text: &str) -> Result<Policy, ConfigErrors> {
    Policy::parse(text, PolicyOrigin::File("policy.toml".into()), &env())
}

fn errors(text: &str) -> Vec<String> {
    parse(text)
        .unwrap_err()
        .0
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn embedded_default_parses_with_defaults_for_a_user() {
    let p = Policy::parse(EMBEDDED_DEFAULT, PolicyOrigin::Embedded, &env()).unwrap();
    assert_eq!(
        p.server.listen,
        vec![Endpoint::Unix(
            "/run/user/1000/buildbroker/docker.sock".into()
        )]
    );
    assert_eq!(
        p.server.upstream,
        Endpoint::Unix("/var/run/docker.sock".into())
    );
    assert_eq!(p.server.unknown_secrets, UnknownIds::Client);
    let netrc = &p.secrets["netrc"];
    assert_eq!(
        netrc.sources[0],
        SourceSpec::ClientEnv("BUILDBROKER_NETRC".into())
    );
    assert_eq!(
        netrc.sources[1],
        SourceSpec::Env("BUILDBROKER_NETRC".into())
    );
    // Only what the user stored for builds: no general-purpose credentials by default.
    for (id, rule) in &p.secrets {
        for source in &rule.sources {
            let for_builds = match source {
                SourceSpec::Env(name) | SourceSpec::ClientEnv(name) => {
                    name.starts_with("BUILDBROKER_")
                }
                SourceSpec::Keyring(k) => k.to_string().starts_with("buildbroker/"),
                SourceSpec::Client => true,
                _ => false,
            };
            assert!(
                for_builds,
                "[secrets.{id}] reads {source}, which is not meant for builds"
            );
        }
    }
    assert!(p.secrets.contains_key("GIT_AUTH_TOKEN.github.com"));
    assert!(
        p.secrets
            .values()
            .all(|r| r.cache_ttl.is_none() && !r.required),
        "nothing cached or required by default"
    );
    assert_eq!(netrc.sources.last(), Some(&SourceSpec::Client));
}

#[test]
fn root_listens_under_run() {
    let root = HostEnv { euid: 0, ..env() };
    let p = Policy::parse("", PolicyOrigin::Embedded, &root).unwrap();
    assert_eq!(
        p.server.listen,
        vec![Endpoint::Unix("/run/buildbroker/docker.sock".into())]
    );
}

#[test]
fn upstream_comes_from_docker_host_unless_it_loops() {
    let e = HostEnv {
        docker_host: Some("unix:///var/run/other.sock".into()),
        ..env()
    };
    let p = Policy::parse("", PolicyOrigin::Embedded, &e).unwrap();
    assert_eq!(
        p.server.upstream,
        Endpoint::Unix("/var/run/other.sock".into())
    );

    let looping = HostEnv {
        docker_host: Some("unix:///run/user/1000/buildbroker/docker.sock".into()),
        ..env()
    };
    let err = Policy::parse("", PolicyOrigin::Embedded, &looping)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("points at buildbroker's own listener"),
        "{err}"
    );
}

#[test]
fn explicit_upstream_equal_to_listen_is_refused() {
    let errs =
        errors("[server]\nlisten = [\"unix:///tmp/a.sock\"]\nupstream = \"unix:///tmp/a.sock\"\n");
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("policy.toml:3:12: [server] upstream"),
        "{errs:?}"
    );
}

#[test]
fn unknown_key_is_located() {
    let errs = errors("[server]\nunknown_secrets = \"deny\"\nlisten_on = []\n");
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("policy.toml:3:1: unknown key `listen_on`"),
        "{errs:?}"
    );
    assert!(errs[0].contains("expected one of"), "{errs:?}");
}

#[test]
fn wrong_type_is_located() {
    let errs = errors("[secrets.x]\nsources = [\"env:X\"]\nrequired = \"yes\"\n");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("policy.toml:3:12:"), "{errs:?}");
    assert!(errs[0].contains("boolean"), "{errs:?}");
}

#[test]
fn unknown_variant_says_what_is_expected() {
    let errs = errors("[server]\nunknown_secrets = \"maybe\"\n");
    assert!(errs[0].starts_with("policy.toml:2:19:"), "{errs:?}");
    assert!(
        errs[0].contains("`client`") && errs[0].contains("`deny`"),
        "{errs:?}"
    );
}

#[test]
fn semantic_errors_are_all_collected_in_file_order() {
    let text = "\
[server]
listen = [\"tcp://0.0.0.0:2375\"]
upstream = \"http://x\"

[secrets.a]
sources = [\"env:\", \"vault:x\"]
mode = 0o1777

[secrets.b]
sources = []
";
    let errs = errors(text);
    let locations: Vec<&str> = errs.iter().map(|e| e.split(": ").next().unwrap()).collect();
    assert_eq!(
        locations,
        vec![
            "policy.toml:2:11",
            "policy.toml:3:12",
            "policy.toml:6:12",
            "policy.toml:6:20",
            "policy.toml:7:8",
            "policy.toml:10:11",
        ],
        "{errs:#?}"
    );
    assert!(
        errs[3].contains("unknown source \"vault:x\""),
        "{}",
        errs[3]
    );
}

#[test]
fn secret_rule_fields() {
    let p = parse(
        "[secrets.pypi_token]\nsources = [\"env:PYPI_TOKEN\", \"file:~/.pypirc\"]\nrequired = true\nmode = 0o440\nuid = 1000\n",
    )
    .unwrap();
    let r = &p.secrets["pypi_token"];
    assert!(r.required);
    assert_eq!(r.mount.mode, Some(0o440));
    assert_eq!(r.mount.uid, Some(1000));
    assert_eq!(r.mount.gid, None);
    assert_eq!(
        r.sources,
        vec![
            SourceSpec::Env("PYPI_TOKEN".into()),
            SourceSpec::File("/home/u/.pypirc".into())
        ]
    );
}

#[test]
fn line_column_counts_characters() {
    let t = "ab\nçd=x\n";
    assert_eq!(line_column(t, 0), (1, 1));
    assert_eq!(line_column(t, 3), (2, 1));
    assert_eq!(line_column(t, t.find('=').unwrap()), (2, 3));
}

#[test]
fn config_lookup_order() {
    let e = HostEnv {
        buildbroker_config: Some("/x/p.toml".into()),
        xdg_config_home: None,
        ..env()
    };
    assert_eq!(
        e.config_candidates(),
        vec![
            PathBuf::from("/x/p.toml"),
            PathBuf::from("/home/u/.config/buildbroker/policy.toml"),
            PathBuf::from("/etc/buildbroker/policy.toml"),
        ]
    );
    let e = HostEnv {
        xdg_config_home: Some("/cfg".into()),
        ..env()
    };
    assert_eq!(
        e.config_candidates()[0],
        PathBuf::from("/cfg/buildbroker/policy.toml")
    );
}

#[test]
fn missing_explicit_file_is_a_read_error() {
    let err = Policy::load(Some(Path::new("/nonexistent/p.toml")), &env()).unwrap_err();
    assert!(matches!(err, LoadError::Read { .. }));
    assert!(err.to_string().contains("/nonexistent/p.toml"));
}

#[test]
fn home_comes_from_passwd_when_home_is_unset() {
    let passwd = "root:x:0:0:root:/root:/bin/bash\nu:x:1000:1000::/home/u:/bin/sh\nbad line\n";
    assert_eq!(home_from_passwd(passwd, 0).as_deref(), Some("/root"));
    assert_eq!(home_from_passwd(passwd, 1000).as_deref(), Some("/home/u"));
    assert_eq!(home_from_passwd(passwd, 5), None);
}

#[test]
fn source_settings_tables() {
    let p =
        parse("[keyring]\nbackend = \"kernel\"\ntimeout = \"750ms\"\n[exec]\ntimeout = \"2m\"\n")
            .unwrap();
    assert_eq!(p.sources.keyring_backend, KeyringBackend::Kernel);
    assert_eq!(
        p.sources.keyring_timeout,
        std::time::Duration::from_millis(750)
    );
    assert_eq!(p.sources.exec_timeout, std::time::Duration::from_secs(120));
    let errs = errors("[keyring]\nbackend = \"gnome\"\n");
    assert!(
        errs[0].starts_with("policy.toml:2:11:") && errs[0].contains("`secret-service`"),
        "{errs:?}"
    );
    let errs = errors("[exec]\ntimeout = \"soon\"\n[keyring]\ntimeout = \"0s\"\n");
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with("policy.toml:2:11: [exec] timeout: expected a duration"),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("policy.toml:4:11: [keyring] timeout: expected a positive duration"),
        "{errs:?}"
    );
}

#[test]
fn cache_settings() {
    let p = parse(
        "[secrets.a]\nsources = [\"env:A\"]\ncache_ttl = \"5m\"\nstale_on_error = true\n\
         [secrets.b]\nsources = [\"env:B\"]\ncache_ttl = \"30s\"\nstale_on_error = \"10m\"\n\
         [secrets.c]\nsources = [\"env:C\"]\n",
    )
    .unwrap();
    assert_eq!(
        p.secrets["a"].cache_ttl,
        Some(std::time::Duration::from_secs(300))
    );
    assert_eq!(p.secrets["a"].stale_on_error, Some(DEFAULT_STALE_WINDOW));
    assert_eq!(
        p.secrets["b"].stale_on_error,
        Some(std::time::Duration::from_secs(600))
    );
    assert_eq!(p.secrets["c"].cache_ttl, None, "off by default");

    let errs = errors("[secrets.a]\nsources = [\"env:A\"]\nstale_on_error = true\n");
    assert!(
        errs[0].starts_with("policy.toml:3:18: [secrets.a] stale_on_error needs cache_ttl"),
        "{errs:?}"
    );
    let errs = errors("[secrets.a]\nsources = [\"env:A\"]\ncache_ttl = \"forever\"\n");
    assert!(
        errs[0].starts_with("policy.toml:3:13: [secrets.a] cache_ttl: expected a duration"),
        "{errs:?}"
    );
}

#[test]
fn ssh_ids_of_both_kinds_parse() {
    let p = parse(
        r#"
[ssh.default]
agent = "env:SSH_AUTH_SOCK"
keys = ["SHA256:almGDuqx8VkUVKH/B5JhKyBNge9MyiYPB1e472FpkXo", "comment:deploy@ci"]

[ssh.github]
private_keys = ["file:~/.ssh/github_deploy", "env:GITLAB_KEY"]
passphrase = "env:DEPLOY_KEY_PASSPHRASE"
hosts = ["github.com", "SHA256:SZjPLR5J7ZAvcDVHHNdBJmrg+pXR3GtWq9fgIlM2rm0"]
known_hosts = "~/.ssh/known_hosts"
socket = "/run/buildbroker/ssh/github.sock"
"#,
    )
    .unwrap();
    let default = &p.ssh["default"];
    assert_eq!(
        default.keys,
        SshKeys::Upstream {
            agent: AgentSocket::Env("SSH_AUTH_SOCK".into()),
            allow: vec![
                KeyMatch::Fingerprint(
                    "SHA256:almGDuqx8VkUVKH/B5JhKyBNge9MyiYPB1e472FpkXo"
                        .parse()
                        .unwrap()
                ),
                KeyMatch::Comment("deploy@ci".into()),
            ],
        }
    );
    assert!(default.hosts.is_empty() && default.socket.is_none());
    let github = &p.ssh["github"];
    assert_eq!(
        github.keys,
        SshKeys::Held {
            private_keys: vec![
                SourceSpec::File("/home/u/.ssh/github_deploy".into()),
                SourceSpec::Env("GITLAB_KEY".into()),
            ],
            passphrase: Some(SourceSpec::Env("DEPLOY_KEY_PASSPHRASE".into())),
        }
    );
    assert_eq!(github.hosts[0], HostRule::Name("github.com".into()));
    assert!(matches!(github.hosts[1], HostRule::Fingerprint(_)));
    assert_eq!(
        github.known_hosts.as_deref(),
        Some(std::path::Path::new("/home/u/.ssh/known_hosts"))
    );
    assert_eq!(
        github.socket.as_deref(),
        Some(std::path::Path::new("/run/buildbroker/ssh/github.sock"))
    );
}

#[test]
fn ssh_mistakes_are_reported_with_line_and_column() {
    // (policy text, expected error substring, line:column)
    let table = [
        ("[ssh.a]\nkeys = []\n", "expected `agent = ", "1:1"),
        (
            "[ssh.a]\nagent = \"/a.sock\"\nprivate_keys = [\"file:/k\"]\n",
            "`agent` and `private_keys` exclude each other",
            "3:16",
        ),
        (
            "[ssh.a]\nagent = \"/a.sock\"\n",
            "needs `keys = [\"SHA256:",
            "2:9",
        ),
        (
            "[ssh.a]\nagent = \"/a.sock\"\nkeys = []\n",
            "an empty list exposes nothing",
            "3:8",
        ),
        (
            "[ssh.a]\nagent = \"/a.sock\"\nkeys = [\"deadbeef\"]\n",
            "expected a SHA256 fingerprint",
            "3:9",
        ),
        (
            "[ssh.a]\nagent = \"relative.sock\"\nkeys = [\"comment:x\"]\n",
            "absolute agent socket path",
            "2:9",
        ),
        (
            "[ssh.a]\nagent = \"env:1X\"\nkeys = [\"comment:x\"]\n",
            "expected env:NAME",
            "2:9",
        ),
        (
            "[ssh.a]\nagent = \"/a.sock\"\nkeys = [\"comment:x\"]\npassphrase = \"env:P\"\n",
            "passphrase: only for `private_keys`",
            "4:14",
        ),
        (
            "[ssh.a]\nprivate_keys = []\n",
            "expected at least one source",
            "2:16",
        ),
        (
            "[ssh.a]\nprivate_keys = [\"client\"]\n",
            "client is not a source for ssh keys",
            "2:17",
        ),
        (
            "[ssh.a]\nprivate_keys = [\"file:/k\"]\nkeys = [\"comment:x\"]\n",
            "keys: only for `agent`",
            "3:8",
        ),
        (
            "[ssh.a]\nprivate_keys = [\"file:/k\"]\nhosts = [\"github.com\"]\n",
            "add known_hosts",
            "3:10",
        ),
        (
            "[ssh.a]\nprivate_keys = [\"file:/k\"]\nhosts = [\"SHA256:nope\"]\n",
            "expected a SHA256 host key fingerprint",
            "3:10",
        ),
        (
            "[ssh.a]\nprivate_keys = [\"file:/k\"]\nhosts = [\"a,b\"]\n",
            "one host name or pattern",
            "3:10",
        ),
        (
            "[ssh.a]\nprivate_keys = [\"file:/k\"]\nknown_hosts = \"/kh\"\n",
            "only used to resolve the host names",
            "3:15",
        ),
        (
            "[ssh.a]\nprivate_keys = [\"file:/k\"]\nsocket = \"/s\"\n[ssh.b]\nprivate_keys = [\"file:/k\"]\nsocket = \"/s\"\n",
            "already the socket of another ssh id",
            "6:10",
        ),
        (
            "[ssh.a]\nprivate_keys = [\"file:/k\"]\nsockets = \"/s\"\n",
            "unknown key `sockets`",
            "3:1",
        ),
    ];
    for (text, expected, at) in table {
        let errs = errors(text);
        assert!(
            errs.iter()
                .any(|e| e.contains(expected) && e.starts_with(&format!("policy.toml:{at}:"))),
            "{text:?}: expected {expected:?} at {at}, got {errs:#?}"
        );
    }
}

#[test]
fn socket_group_by_name_or_number_is_also_an_access_gid() {
    let p = parse("[server]\nsocket_group = \"root\"\n[access]\ngids = [27]\n").unwrap();
    assert_eq!(p.server.socket_group, Some(0));
    assert_eq!(p.access.gids, vec![27, 0]);
    let p = parse("[server]\nsocket_group = 999\n").unwrap();
    assert_eq!(p.server.socket_group, Some(999));
    assert_eq!(p.access.gids, vec![999]);
    assert_eq!(parse("").unwrap().server.socket_group, None);
    let e = errors("[server]\nsocket_group = \"no-such-group-here\"\n");
    assert_eq!(e.len(), 1);
    assert!(
        e[0].contains("2:16") && e[0].contains("no group named"),
        "{e:?}"
    );
}

#[test]
fn limits_have_defaults_and_checked_ranges() {
    let p = parse("").unwrap();
    assert_eq!(p.limits, Limits::default());
    assert_eq!(p.limits.connections_per_uid, 1024);
    assert_eq!(p.limits.sessions_per_uid, 128);
    assert_eq!(p.sources.fetches_per_kind, 16);
    let p = parse("[limits]\nconnections_per_uid = 3\nsessions_per_uid = 2\nsource_fetches = 1\n")
        .unwrap();
    assert_eq!(p.limits.connections_per_uid, 3);
    assert_eq!(p.limits.sessions_per_uid, 2);
    assert_eq!(p.sources.fetches_per_kind, 1);
    let e = errors(
        "[limits]\nconnections_per_uid = 0\nsessions_per_uid = -1\nsource_fetches = 100000\nbogus = 1\n",
    );
    assert_eq!(e.len(), 1, "{e:?}"); // the unknown key stops the raw stage
    let e = errors(
        "[limits]\nconnections_per_uid = 0\nsessions_per_uid = -1\nsource_fetches = 100000\n",
    );
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(e.iter().all(|m| m.contains("from 1 to 65536")), "{e:?}");
}

#[test]
fn metrics_listen_is_off_by_default_and_takes_an_ip_and_port_only() {
    assert_eq!(parse("").unwrap().server.metrics_listen, None);
    let p = parse("[server]\nmetrics_listen = \"127.0.0.1:9464\"\n").unwrap();
    assert_eq!(
        p.server.metrics_listen,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    let p = parse("[server]\nmetrics_listen = \"[::1]:0\"\n").unwrap();
    assert_eq!(p.server.metrics_listen, Some("[::1]:0".parse().unwrap()));
    for bad in ["localhost:9464", "9464", "127.0.0.1"] {
        let e = errors(&format!("[server]\nmetrics_listen = \"{bad}\"\n"));
        assert_eq!(e.len(), 1, "{bad}: {e:?}");
        assert!(
            e[0].contains("2:18") && e[0].contains("expected an IP address and port"),
            "{e:?}"
        );
    }
}

#[test]
fn worker_threads_default_to_one_per_core_and_take_1_to_256() {
    assert_eq!(parse("").unwrap().server.worker_threads, None);
    for n in [1, 2, 256] {
        let p = parse(&format!("[server]\nworker_threads = {n}\n")).unwrap();
        assert_eq!(p.server.worker_threads.map(|n| n.get()), Some(n));
    }
    for bad in ["0", "-1", "257"] {
        let e = errors(&format!("[server]\nworker_threads = {bad}\n"));
        assert_eq!(e.len(), 1, "{bad}: {e:?}");
        assert!(
            e[0].contains("policy.toml:2:18") && e[0].contains("from 1 to 256; got"),
            "{e:?}"
        );
    }
    // Not a number: the TOML type error, located.
    let e = errors("[server]\nworker_threads = \"two\"\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("policy.toml:2:"), "{e:?}");
}

#[test]
fn template_errors_are_located() {
    let errs = errors(
        "[secrets.a]\nsources = [\"env:A\"]\n\
         [secrets.netrc]\ntemplate = \"machine h password {{missing}}\"\n\
         [secrets.both]\nsources = [\"env:B\"]\ntemplate = \"{{a}}\"\n\
         [secrets.x]\ntemplate = \"{{y}}\"\n\
         [secrets.y]\ntemplate = \"pre {{x}}\"\n\
         [secrets.open]\ntemplate = \"ab{{a\"\n\
         [secrets.cached]\ntemplate = \"{{a}}\"\ncache_ttl = \"5m\"\n\
         [secrets.none]\nrequired = true\n",
    );
    let want = [
        "4:12: [secrets.netrc] template: {{missing}} names no id of this policy",
        "7:12: [secrets.both]: set either sources or template, not both",
        "9:12: [secrets.x] template: a cycle, x → y → x",
        "13:15: [secrets.open] template: \"{{\" without a closing \"}}\"",
        "16:13: [secrets.cached] cache_ttl: a template is rendered for each request",
        "17:10: [secrets.none]: expected sources = [",
    ];
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
    for (e, w) in errs.iter().zip(want) {
        assert!(e.contains(w), "got {e:?}, want {w:?}");
    }
}

#[test]
fn templates_parse_into_parts() {
    let p =
        parse("[secrets.a]\nsources = [\"env:A\"]\n[secrets.t]\ntemplate = \"x{{a}}y\"\n").unwrap();
    let t = p.secrets["t"].template.as_ref().unwrap();
    assert_eq!(t.inputs(), vec!["a"]);
    assert!(p.secrets["t"].sources.is_empty());
}

#[test]
fn file_allow_foreign_expands_home_and_must_name_a_file_source() {
    let p = parse(
        "[secrets.netrc]\nsources = [\"file:~/.netrc\"]\n[ssh.deploy]\nprivate_keys = [\"file:/home/ci/.ssh/id\"]\n[file]\nallow_foreign = [\"~/.netrc\", \"/home/ci/.ssh/id\"]\n",
    )
    .unwrap();
    assert_eq!(
        p.sources.file_allow_foreign,
        vec![
            std::path::PathBuf::from("/home/u/.netrc"),
            std::path::PathBuf::from("/home/ci/.ssh/id")
        ]
    );
    let errs = errors(
        "[secrets.netrc]\nsources = [\"file:~/.netrc\"]\n[file]\nallow_foreign = [\"relative\", \"/home/u/.netrcc\"]\n",
    );
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].contains("policy.toml:4:18: [file] allow_foreign: expected an absolute path"),
        "{errs:?}"
    );
    assert!(
        errs[1].contains("no file: source of this policy reads /home/u/.netrcc"),
        "{errs:?}"
    );
}

#[test]
fn ssh_certificates_and_allow_sha1() {
    let fp = "SHA256:almGDuqx8VkUVKH/B5JhKyBNge9MyiYPB1e472FpkXo";
    let p = parse(&format!(
        "[ssh.ci]\nagent = \"env:SSH_AUTH_SOCK\"\nkeys = [\"{fp}\", \"cert:{fp}\"]\nallow_sha1 = true\n"
    ))
    .unwrap();
    let rule = &p.ssh["ci"];
    assert!(rule.allow_sha1);
    let SshKeys::Upstream { allow, .. } = &rule.keys else {
        panic!("an upstream id")
    };
    assert!(matches!(allow[0], KeyMatch::Fingerprint(_)));
    assert!(matches!(allow[1], KeyMatch::Certificate(_)));
    assert_eq!(allow[1].to_string(), format!("cert:{fp}"));
    let plain = parse("[ssh.ci]\nagent = \"env:SSH_AUTH_SOCK\"\nkeys = [\"comment:x\"]\n").unwrap();
    assert!(!plain.ssh["ci"].allow_sha1, "SHA-1 is off unless asked for");
    let errs = errors("[ssh.ci]\nagent = \"env:SSH_AUTH_SOCK\"\nkeys = [\"cert:nope\"]\n");
    assert!(
        errs[0].contains("expected cert:SHA256:… with the fingerprint of the certificate's key"),
        "{errs:?}"
    );
}

#[test]
fn tcp_listen_needs_mutual_tls_or_loopback_insecure_tcp() {
    let base = "[server]\nupstream = \"unix:///var/run/docker.sock\"\n";
    let e = errors(&format!("{base}listen = [\"tcp://0.0.0.0:2376\"]\n"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("policy.toml:3:11: [server] listen:"),
        "{e:?}"
    );
    assert!(e[0].contains("needs mutual TLS: add [server.tls]"), "{e:?}");

    let e = errors(&format!(
        "{base}insecure_tcp = true\nlisten = [\"tcp://0.0.0.0:2375\"]\n"
    ));
    assert!(e[0].starts_with("policy.toml:4:11:"), "{e:?}");
    assert!(e[0].contains("only on a loopback address"), "{e:?}");
    let p = parse(&format!(
        "{base}insecure_tcp = true\nlisten = [\"tcp://127.0.0.1:2375\"]\n"
    ))
    .unwrap();
    assert_eq!(
        p.server.listen,
        vec![Endpoint::Tcp("127.0.0.1:2375".into())]
    );
    assert!(p.server.tls.is_none());

    let e = errors(&format!(
        "{base}listen = [\"tcp://docker.example:2376\"]\n[server.tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nclient_ca = \"/ca.pem\"\n"
    ));
    assert!(e[0].contains("expected tcp://IP:PORT"), "{e:?}");

    let p = parse(&format!(
        "{base}listen = [\"tcp://0.0.0.0:2376\", \"unix:///run/b.sock\"]\n[server.tls]\ncert = \"/c.pem\"\nkey = \"~/k.pem\"\nclient_ca = \"/ca.pem\"\n"
    ))
    .unwrap();
    let tls = p.server.tls.unwrap();
    assert_eq!(tls.key, PathBuf::from("/home/u/k.pem"));
    assert_eq!(tls.client_ca, PathBuf::from("/ca.pem"));
}

#[test]
fn tls_tables_are_checked_with_locations() {
    let e = errors(
        "[server]\nupstream = \"unix:///var/run/docker.sock\"\n[server.tls]\ncert = \"c.pem\"\nkey = \"/k.pem\"\n",
    );
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e.iter()
            .any(|m| m.starts_with("policy.toml:4:8: [server.tls] cert: expected an absolute path")),
        "{e:?}"
    );
    assert!(e.iter().any(|m| m.contains("expected client_ca")), "{e:?}");
    let e = errors(
        "[server]\nupstream = \"unix:///var/run/docker.sock\"\n[upstream_tls]\nca = \"/ca.pem\"\n",
    );
    assert!(e[0].contains("[server] upstream is a unix socket"), "{e:?}");
    let e = errors(
        "[server]\nupstream = \"tcp://docker:2376\"\n[upstream_tls]\ncert = \"/c.pem\"\nserver_name = \"bad name\"\n",
    );
    assert!(e.iter().any(|m| m.contains("expected ca = ")), "{e:?}");
    assert!(e.iter().any(|m| m.contains("cert needs key")), "{e:?}");
    assert!(
        e.iter()
            .any(|m| m.starts_with("policy.toml:5:15: [upstream_tls] server_name")),
        "{e:?}"
    );
    let e = errors(
        "[server]\nupstream = \"tcp://docker:2376\"\n[upstream_tls]\nca = \"/ca.pem\"\nverify = false\n",
    );
    assert!(e[0].contains("unknown key `verify`"), "{e:?}");
    let p = parse(
        "[server]\nupstream = \"tcp://docker:2376\"\n[upstream_tls]\nca = \"/certs/client/ca.pem\"\ncert = \"/certs/client/cert.pem\"\nkey = \"/certs/client/key.pem\"\n[buildkit_upstream_tls]\nca = \"/b/ca.pem\"\n",
    )
    .unwrap();
    let up = p.server.upstream_tls.unwrap();
    assert_eq!(up.key, Some(PathBuf::from("/certs/client/key.pem")));
    assert_eq!(up.server_name, None);
    assert_eq!(
        p.server.buildkit_upstream_tls.unwrap().ca,
        PathBuf::from("/b/ca.pem")
    );
}

#[test]
fn clients_lists_are_typed_and_located() {
    use crate::access::ClientMatch;
    let p = parse(
        "[access]\nclients = [\"ci-a\"]\n[secrets.a]\nsources = [\"env:A\"]\nclients = [\"ci-a\", \"uid:1000\"]\n[ssh.default]\nagent = \"env:SSH_AUTH_SOCK\"\nkeys = [\"comment:x\"]\nclients = [\"ci-b\"]\n",
    )
    .unwrap();
    assert_eq!(p.access.clients, Some(vec!["ci-a".to_string()]));
    assert_eq!(
        p.secrets["a"].clients,
        Some(vec![
            ClientMatch::Tls("ci-a".into()),
            ClientMatch::Uid(1000)
        ])
    );
    assert_eq!(
        p.ssh["default"].clients,
        Some(vec![ClientMatch::Tls("ci-b".into())])
    );
    assert_eq!(parse("").unwrap().access.clients, None);

    let e = errors(
        "[access]\nclients = [\"uid:0\"]\n[secrets.a]\nsources = [\"env:A\"]\nclients = [\"uid:me\", \"\"]\n[secrets.b]\nsources = [\"env:B\"]\nclients = []\n",
    );
    assert_eq!(e.len(), 4, "{e:?}");
    assert!(
        e[0].starts_with("policy.toml:2:12: [access] clients:"),
        "{e:?}"
    );
    assert!(e[0].contains("unix peers go in [access] uids"), "{e:?}");
    assert!(
        e[1].starts_with("policy.toml:5:12: [secrets.a] clients: expected uid:N"),
        "{e:?}"
    );
    assert!(
        e[2].starts_with("policy.toml:5:22: [secrets.a] clients:"),
        "{e:?}"
    );
    assert!(
        e[3].starts_with("policy.toml:8:11: [secrets.b] clients: an empty list"),
        "{e:?}"
    );
}
