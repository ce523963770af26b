//! The configuration read, checked and refused as a person would write it.

use super::*;

#[test]
fn a_file_error_says_where_without_quoting_the_line() {
    let err = parse_file("listen = \"127.0.0.1:0\"\nadmin_tokne = \"s3cret-s3cret-s3cret\"\n").unwrap_err();
    assert!(err.starts_with("line 2, column 1: unknown field `admin_tokne`"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

#[test]
fn lists_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("hub.toml");
    std::fs::write(&p, "grace_period_ms = 0\nretry_base_ms = 10\nretry_max_ms = 5\n").unwrap();
    let err = HubConfig::load(Overrides { config: Some(p), listen: Some("nonsense".into()), ..Default::default() })
        .unwrap_err();
    assert_eq!(err.0.len(), 3, "{err}");
}

#[test]
fn unknown_key_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("hub.toml");
    std::fs::write(&p, "listen = \"127.0.0.1:1\"\ngrace_ms = 5\n").unwrap();
    let err = HubConfig::load(Overrides { config: Some(p), ..Default::default() }).unwrap_err().to_string();
    assert!(err.contains("hub.toml") && err.contains("line 2") && err.contains("grace_ms"), "{err}");
}

mod props {
    use super::super::*;
    use proptest::prelude::*;

    const KEYS: &[&str] = &[
        "listen",
        "grace_period_ms",
        "accept_timeout_ms",
        "retry_base_ms",
        "retry_max_ms",
        "violation_limit",
        "ban_ms",
        "max_open_tasks",
        "max_description_chars",
        "max_progress_bytes",
        "max_connections",
        "agent_reserve_percent",
        "reader_connections",
        "header_read_timeout_ms",
        "no_such_key",
    ];

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u8>().prop_map(|n| n.to_string()),
            "[a-z0-9:. ]{0,12}".prop_map(|s| format!("{s:?}")),
            proptest::collection::vec(any::<u16>(), 0..4).prop_map(|v| format!("{v:?}")),
            Just("true".to_string()),
            "\\PC{0,20}",
        ]
    }

    proptest! {
        // Failures are reported, not written into the source tree.
        #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any file: parsed or refused with a message, never a panic; every error names its key.
        #[test]
        fn any_config_file_is_parsed_or_refused_by_name(
            lines in proptest::collection::vec((0..KEYS.len(), value()), 0..6)
        ) {
            let text: String = lines.iter().map(|(k, v)| format!("{} = {v}\n", KEYS[*k])).collect();
            match parse_file(&text) {
                Err(e) => prop_assert!(!e.is_empty()),
                Ok(file) => {
                    if let Err(errors) = HubConfig::resolve(file, Overrides::default(), Vec::new()) {
                        for e in &errors.0 {
                            prop_assert!(KEYS.iter().any(|k| e.starts_with(k)), "{e}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn database_tls_settings_are_checked_with_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("hub.toml");
    let missing = dir.path().join("no-such-ca.pem");
    std::fs::write(
        &p,
        format!(
            "admin_token = \"test-admin-token-0123456789abcdef\"\ngrace_period_ms = 0\n\
             database_url = \"postgres://agentcom@db/agentcom?sslmode=verify-fully\"\n\
             database_ca_file = {:?}\n",
            missing.display().to_string()
        ),
    )
    .unwrap();
    let err = HubConfig::load(Overrides { config: Some(p.clone()), ..Default::default() }).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("grace_period_ms: must be greater than 0"), "{text}");
    assert!(text.contains("database_url: sslmode \"verify-fully\" is not one of"), "{text}");
    assert!(
        err.0.iter().any(|e| e.starts_with("database_ca_file: ") && e.contains(&missing.display().to_string())),
        "{text}"
    );

    // The env / flag value is used like the file's; without a database URL it is a mistake.
    let certs = testkit::tls::tls_files(&dir.path().join("certs")).unwrap();
    let o = Overrides {
        admin_token: Some("test-admin-token-0123456789abcdef".into()),
        database_url: Some("postgres://agentcom@db/agentcom?sslmode=verify-full".into()),
        database_ca_file: Some(certs.ca.clone()),
        ..Default::default()
    };
    let c = HubConfig::load(o.clone()).unwrap();
    let db = &c.ha.unwrap().database;
    assert_eq!(db.ssl_mode(), crate::store::SslMode::VerifyFull);
    let err = HubConfig::load(Overrides { database_url: None, ..o }).unwrap_err();
    assert_eq!(err.0, ["database_ca_file: only used with database_url"]);
}

#[test]
fn flags_win_over_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("hub.toml");
    std::fs::write(&p, "listen = \"127.0.0.1:1\"\ngrace_period_ms = 250\n").unwrap();
    let c = HubConfig::load(Overrides { config: Some(p), listen: Some("127.0.0.1:2".into()), ..Default::default() })
        .unwrap();
    assert_eq!(c.listen, "127.0.0.1:2");
    assert_eq!(c.timings.grace_period, Duration::from_millis(250));
}
