use aws_sdk_secretsmanager::error::{ConnectorError, ErrorMetadata};
use aws_sdk_secretsmanager::types::error::{
    DecryptionFailure, InternalServiceError, InvalidRequestException, ResourceNotFoundException,
};
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;

use super::*;

fn spec(text: &str) -> AwsSmSpec {
    AwsSmSpec::parse(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
}

#[test]
fn parses_names_arns_options_and_key_paths() {
    assert_eq!(
        spec("prod/db_+=.@-x"),
        AwsSmSpec {
            secret_id: "prod/db_+=.@-x".into(),
            region: None,
            version_stage: None,
            version_id: None,
            json_path: None,
        }
    );
    let full =
        spec("ci/aws?region=eu-west-1&version_stage=AWSPREVIOUS&version_id=0a1b-2c#creds.key_id");
    assert_eq!(full.secret_id, "ci/aws");
    assert_eq!(full.region.as_deref(), Some("eu-west-1"));
    assert_eq!(full.version_stage.as_deref(), Some("AWSPREVIOUS"));
    assert_eq!(full.version_id.as_deref(), Some("0a1b-2c"));
    assert_eq!(
        full.json_path,
        Some(vec!["creds".to_string(), "key_id".to_string()])
    );

    let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf";
    let from_arn = spec(&format!("{arn}#password"));
    assert_eq!(from_arn.secret_id, arn);
    assert_eq!(
        from_arn.own_region(),
        Some("us-east-1"),
        "an ARN names its region"
    );
    assert_eq!(spec("x?region=ap-south-2").own_region(), Some("ap-south-2"));
    assert_eq!(spec("x").own_region(), None);
    assert!(
        spec("arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:x").own_region()
            == Some("cn-north-1")
    );
}

#[test]
fn rejects_malformed_uris_and_says_the_expected_form() {
    for bad in [
        "",
        "?region=us-east-1",
        "has space",
        "semi;colon",
        "x?region",
        "x?region=",
        "x?region=US_EAST",
        "x?colour=blue",
        "x?region=us-east-1&region=us-east-2",
        "x?version_stage=",
        "x?version_id=not/a/uuid",
        "x#",
        "x#a..b",
        "x#.a",
        "arn:aws:s3:us-east-1:123456789012:secret:x",
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:",
        "arn:aws:secretsmanager:us-east-1:acct:secret:x",
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:x?region=eu-west-1",
    ] {
        let err = AwsSmSpec::parse(bad)
            .err()
            .unwrap_or_else(|| panic!("{bad:?} should be rejected"));
        assert!(
            err.contains("expected aws-sm:NAME_OR_ARN["),
            "{bad:?}: {err}"
        );
        assert!(
            err.contains(&format!("{:?}", format!("aws-sm:{bad}"))),
            "names the input: {err}"
        );
    }
    let long = "a".repeat(513);
    assert!(AwsSmSpec::parse(&long).is_err());
    assert!(AwsSmSpec::parse(&long[..512]).is_ok());
    let unknown = AwsSmSpec::parse("x?colour=blue").unwrap_err();
    assert!(
        unknown.contains("known: region, version_stage, version_id"),
        "{unknown}"
    );
}

#[test]
fn display_round_trips() {
    for text in [
        "prod/db",
        "prod/db#password",
        "prod/db?region=eu-west-1",
        "prod/db?version_stage=AWSPREVIOUS#a.b.c",
        "prod/db?region=eu-west-1&version_stage=AWSCURRENT&version_id=a1b2-c3#k",
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf#user",
    ] {
        assert_eq!(spec(text).to_string(), text);
        assert_eq!(spec(&spec(text).to_string()), spec(text));
    }
    // Options in another order come back in the canonical one.
    assert_eq!(
        spec("x?version_id=v1&region=us-east-1").to_string(),
        "x?region=us-east-1&version_id=v1"
    );
}

#[test]
fn checks_regions_and_endpoint_urls() {
    assert!(check_region("us-gov-west-1").is_ok());
    assert!(check_region("").is_err());
    assert!(check_region("EU").is_err());
    for ok in [
        "http://127.0.0.1:5000",
        "https://secretsmanager.eu-west-1.amazonaws.com",
        "https://vpce.example/",
    ] {
        assert!(check_endpoint_url(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "127.0.0.1:5000",
        "ftp://x",
        "http://",
        "https://x/?a=b",
        "not a url",
    ] {
        assert!(check_endpoint_url(bad).is_err(), "{bad}");
    }
}

fn path(dotted: &str) -> Vec<String> {
    dotted.split('.').map(str::to_string).collect()
}

fn found(document: &str, dotted: &str) -> Vec<u8> {
    match select_json(document.as_bytes(), &path(dotted)) {
        Ok(Lookup::Found(v)) => v.expose().to_vec(),
        Ok(Lookup::Missing(why)) => panic!("{dotted}: missing: {why}"),
        Err(e) => panic!("{dotted}: error: {}", e.message),
    }
}

fn missing(document: &str, dotted: &str) -> String {
    match select_json(document.as_bytes(), &path(dotted)) {
        Ok(Lookup::Missing(why)) => why,
        Ok(Lookup::Found(_)) => panic!("{dotted}: unexpectedly found"),
        Err(e) => panic!("{dotted}: error: {}", e.message),
    }
}

fn failed(document: &[u8], dotted: &str) -> SourceError {
    match select_json(document, &path(dotted)) {
        Err(e) => e,
        Ok(_) => panic!("{dotted}: expected an error"),
    }
}

#[test]
fn json_selection_strings_numbers_objects_and_nesting() {
    let doc = r#" { "username": "admin", "password": "p\"w\\d\n\u00e9\ud83d\ude00/", "port": 5432,
        "tls": true, "ratio": 1.5e3, "nested": { "a": { "b": "deep", "n": [1, 2] } },
        "empty": "", "nothing": null, "dup": "first", "dup": "last", "esc\u0061ped": "key" } "#;
    assert_eq!(found(doc, "username"), b"admin");
    assert_eq!(found(doc, "password"), "p\"w\\d\né😀/".as_bytes());
    assert_eq!(found(doc, "port"), b"5432");
    assert_eq!(found(doc, "tls"), b"true");
    assert_eq!(found(doc, "ratio"), b"1.5e3");
    assert_eq!(found(doc, "nested.a.b"), b"deep");
    assert_eq!(found(doc, "nested.a.n"), b"[1, 2]");
    assert_eq!(found(doc, "nested.a"), br#"{ "b": "deep", "n": [1, 2] }"#);
    assert_eq!(found(doc, "empty"), b"");
    assert_eq!(
        found(doc, "dup"),
        b"last",
        "the last duplicate wins, as in JSON.parse"
    );
    assert_eq!(found(doc, "escaped"), b"key", "keys are compared unescaped");

    assert_eq!(missing(doc, "nope"), "the secret's JSON has no key nope");
    assert_eq!(
        missing(doc, "nested.a.zzz"),
        "the secret's JSON has no key nested.a.zzz"
    );
    assert_eq!(
        missing(doc, "nested.x.y"),
        "the secret's JSON has no key nested.x"
    );
    assert!(missing(doc, "nothing").contains("null"));

    let through_string = failed(doc.as_bytes(), "username.x");
    assert!(!through_string.transient);
    assert!(
        through_string
            .message
            .contains("field username is a string, not an object"),
        "{}",
        through_string.message
    );
    let through_array = failed(doc.as_bytes(), "nested.a.n.0");
    assert!(
        through_array
            .message
            .contains("field nested.a.n is an array"),
        "{}",
        through_array.message
    );
}

#[test]
fn json_selection_on_non_json_is_a_permanent_error_that_never_quotes_the_value() {
    for document in [
        &b"hunter2-not-json"[..],
        b"{\"a\": \"hunter2\"",
        b"\xff\xfehunter2",
        b"[\"hunter2\"]",
        b"\"hunter2\"",
    ] {
        let e = failed(document, "a");
        assert!(!e.transient);
        assert!(e.message.contains("#a cannot select"), "{}", e.message);
        assert!(
            !e.message.contains("hunter2"),
            "the value leaked into: {}",
            e.message
        );
    }
    assert!(
        failed(b"[1]", "a")
            .message
            .contains("the secret is an array")
    );
}

#[test]
fn unescaping_matches_serde_json_and_never_reallocates() {
    let cases = [
        r#"plain"#,
        r#"tab\tnl\ncr\rq\"bs\\sl\/b\bf\f"#,
        r#"\u0041\u00e9\u20ac\ud834\udd1e\u0000"#,
        r#"mixed é and \u00e9 and 😀"#,
        r#""#,
    ];
    for escaped in cases {
        let expected: String = serde_json::from_str(&format!("\"{escaped}\"")).unwrap();
        let mut out = crate::secret::SecretBuf::with_capacity(escaped.len());
        let at = out.spare_mut().as_ptr();
        unescape_json_string(escaped, &mut out).unwrap();
        assert_eq!(out.as_slice(), expected.as_bytes(), "{escaped}");
        if !escaped.is_empty() {
            assert_eq!(
                out.as_slice().as_ptr(),
                at,
                "{escaped}: the buffer was moved"
            );
        }
    }
    for bad in [
        r#"\"#,
        r#"\x"#,
        r#"\u12"#,
        r#"\u+123"#,
        r#"\ud800"#,
        r#"\ud800\u0041"#,
        r#"\udc00"#,
    ] {
        assert!(
            unescape_json_string(bad, &mut crate::secret::SecretBuf::with_capacity(bad.len()))
                .is_err(),
            "{bad}"
        );
    }
}

fn response(status: u16) -> HttpResponse {
    HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty())
}

fn outcome(err: SdkError<GetSecretValueError, HttpResponse>) -> Result<String, SourceError> {
    let settings = AwsSettings::default();
    match describe_failure(
        &err,
        "prod/db",
        "AWS Secrets Manager in us-east-1",
        &settings,
    ) {
        Ok(Lookup::Missing(why)) => Ok(why),
        Ok(Lookup::Found(_)) => unreachable!("a failure never finds a value"),
        Err(e) => Err(e),
    }
}

/// What the SDK's deserializer attaches to every modeled error.
fn meta(code: &str, message: &str) -> ErrorMetadata {
    ErrorMetadata::builder().code(code).message(message).build()
}

fn generic(code: Option<&str>, status: u16) -> SdkError<GetSecretValueError, HttpResponse> {
    let mut meta = ErrorMetadata::builder().message("from AWS");
    if let Some(code) = code {
        meta = meta.code(code);
    }
    SdkError::service_error(GetSecretValueError::generic(meta.build()), response(status))
}

#[test]
fn not_found_falls_through_to_the_next_source() {
    let err = SdkError::service_error(
        GetSecretValueError::ResourceNotFoundException(
            ResourceNotFoundException::builder()
                .meta(meta(
                    "ResourceNotFoundException",
                    "Secrets Manager can't find the specified secret.",
                ))
                .build(),
        ),
        response(400),
    );
    let why = outcome(err).expect("Missing, not an error");
    assert!(
        why.contains("not found in AWS Secrets Manager in us-east-1"),
        "{why}"
    );
    assert!(why.contains("can't find the specified secret"), "{why}");
}

#[test]
fn authorization_failures_are_permanent_and_say_so() {
    for err in [
        generic(Some("AccessDeniedException"), 400),
        generic(None, 403),
    ] {
        let e = outcome(err).unwrap_err();
        assert!(!e.transient);
        assert!(
            e.message.starts_with("access denied to secret prod/db"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("secretsmanager:GetSecretValue"),
            "{}",
            e.message
        );
    }
    let e = outcome(SdkError::response_error("unparseable", response(403))).unwrap_err();
    assert!(
        !e.transient && e.message.starts_with("access denied"),
        "{}",
        e.message
    );
    for code in [
        "UnrecognizedClientException",
        "ExpiredTokenException",
        "InvalidSignatureException",
    ] {
        let e = outcome(generic(Some(code), 400)).unwrap_err();
        assert!(!e.transient);
        assert!(
            e.message.contains("rejected the AWS credentials") && e.message.contains(code),
            "{}",
            e.message
        );
    }
    let decrypt = SdkError::service_error(
        GetSecretValueError::DecryptionFailure(
            DecryptionFailure::builder()
                .meta(meta("DecryptionFailure", "kms"))
                .build(),
        ),
        response(400),
    );
    let e = outcome(decrypt).unwrap_err();
    assert!(
        !e.transient && e.message.contains("kms:Decrypt"),
        "{}",
        e.message
    );
    let deleted = SdkError::service_error(
        GetSecretValueError::InvalidRequestException(
            InvalidRequestException::builder()
                .meta(meta("InvalidRequestException", "marked for deletion"))
                .build(),
        ),
        response(400),
    );
    let e = outcome(deleted).unwrap_err();
    assert!(
        !e.transient && e.message.contains("marked for deletion"),
        "{}",
        e.message
    );
}

#[test]
fn missing_credentials_are_permanent_and_list_where_the_sdk_looked() {
    let err = SdkError::dispatch_failure(ConnectorError::other(
        Box::new(CredentialsError::not_loaded(
            "no providers in chain provided credentials",
        )),
        None,
    ));
    let e = outcome(err).unwrap_err();
    assert!(!e.transient);
    for place in [
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "instance metadata",
    ] {
        assert!(e.message.contains(place), "{place} not in: {}", e.message);
    }
    let slow = SdkError::dispatch_failure(ConnectorError::other(
        Box::new(CredentialsError::provider_timed_out(Duration::from_secs(5))),
        None,
    ));
    assert!(outcome(slow).unwrap_err().transient);
}

#[test]
fn network_faults_throttling_and_5xx_are_transient() {
    let refused = SdkError::dispatch_failure(ConnectorError::io(Box::new(std::io::Error::from(
        std::io::ErrorKind::ConnectionRefused,
    ))));
    let e = outcome(refused).unwrap_err();
    assert!(e.transient);
    assert!(e.message.starts_with("cannot reach AWS Secrets Manager in us-east-1 for secret prod/db (after up to 3 attempts)"), "{}", e.message);
    let e = outcome(SdkError::timeout_error("operation timeout")).unwrap_err();
    assert!(
        e.transient && e.message.contains("within 10s"),
        "{}",
        e.message
    );
    let e = outcome(SdkError::dispatch_failure(ConnectorError::timeout(
        "connect".into(),
    )))
    .unwrap_err();
    assert!(e.transient, "{}", e.message);
    for err in [
        generic(Some("ThrottlingException"), 400),
        generic(Some("TooManyRequestsException"), 429),
        generic(None, 503),
        SdkError::service_error(
            GetSecretValueError::InternalServiceError(InternalServiceError::builder().build()),
            response(500),
        ),
        SdkError::response_error("garbled", response(502)),
    ] {
        let e = outcome(err).unwrap_err();
        assert!(e.transient, "{}", e.message);
    }
    let e = outcome(generic(Some("SomethingNew"), 400)).unwrap_err();
    assert!(
        !e.transient && e.message.contains("HTTP 400"),
        "{}",
        e.message
    );
}

#[test]
fn attempts_share_the_deadline() {
    let settings = AwsSettings {
        timeout: Duration::from_secs(9),
        max_attempts: 3,
        ..AwsSettings::default()
    };
    assert_eq!(settings.attempt_timeout(), Duration::from_secs(3));
}

/// The `[aws]` table, parsed the way `serve`, `check` and `resolve` do.
fn policy(text: &str) -> Result<crate::config::Policy, Vec<String>> {
    let env = crate::config::HostEnv {
        home: Some("/home/u".into()),
        ..Default::default()
    };
    crate::config::Policy::parse(
        text,
        crate::config::PolicyOrigin::File("policy.toml".into()),
        &env,
    )
    .map_err(|errs| errs.0.iter().map(ToString::to_string).collect())
}

#[test]
fn aws_table_defaults_and_every_key() {
    let defaults = policy("[secrets.db]\nsources = [\"aws-sm:prod/db#password\"]\n").unwrap();
    assert_eq!(defaults.sources.aws, AwsSettings::default());
    assert_eq!(defaults.secrets["db"].sources[0].kind(), "aws-sm");
    assert_eq!(
        defaults.secrets["db"].sources[0].to_string(),
        "aws-sm:prod/db#password"
    );

    let p = policy(
        "[aws]\nregion = \"eu-west-1\"\nendpoint_url = \"http://127.0.0.1:5000\"\nprofile = \"ci\"\n\
         timeout = \"4s\"\nconnect_timeout = \"500ms\"\nmax_attempts = 2\n",
    )
    .unwrap();
    assert_eq!(
        p.sources.aws,
        AwsSettings {
            region: Some("eu-west-1".into()),
            endpoint_url: Some("http://127.0.0.1:5000".into()),
            profile: Some("ci".into()),
            timeout: Duration::from_secs(4),
            connect_timeout: Duration::from_millis(500),
            max_attempts: 2,
        }
    );
}

#[test]
fn aws_table_errors_are_located() {
    let errs = policy("[aws]\nregion = \"eu-west-1\"\nendpoint = \"http://x\"\n").unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("policy.toml:3:1: unknown key `endpoint`"),
        "{errs:?}"
    );
    assert!(errs[0].contains("`endpoint_url`"), "{errs:?}");

    let errs = policy(
        "[aws]\nregion = \"EU West\"\nendpoint_url = \"localhost:5000\"\nprofile = \"\"\n\
         timeout = \"0s\"\nconnect_timeout = \"soon\"\nmax_attempts = 0\n\
         [secrets.x]\nsources = [\"aws-sm:x?regio=us-east-1\"]\n",
    )
    .unwrap_err();
    let locations: Vec<&str> = errs.iter().map(|e| e.split(": ").next().unwrap()).collect();
    assert_eq!(
        locations,
        [
            "policy.toml:2:10",
            "policy.toml:3:16",
            "policy.toml:4:11",
            "policy.toml:5:11",
            "policy.toml:6:19",
            "policy.toml:7:16",
            "policy.toml:9:12",
        ],
        "{errs:#?}"
    );
    assert!(
        errs[0].contains("[aws] region: expected a region name"),
        "{}",
        errs[0]
    );
    assert!(
        errs[1].contains("[aws] endpoint_url: expected an http:// or https:// URL"),
        "{}",
        errs[1]
    );
    assert!(
        errs[5].contains("[aws] max_attempts: expected 1 to 10"),
        "{}",
        errs[5]
    );
    assert!(errs[6].contains("unknown option \"regio\""), "{}", errs[6]);
}
