//! Frames parsed, refused and written back as a v1 peer sees them.

use super::*;
use serde_json::json;
use serde_json::{Map, Value};

#[test]
fn identify_roundtrips_with_extras() {
    let f = parse_agent_frame(
        r#"{"type":"identify","agent_id":"a1","token":"t","capabilities":["rust"],"protocol_version":1,
            "pm2_info":{"name":"s","status":"online","uptime_ms":5,"restart_count":1,"memory_bytes":9},"extra":true}"#,
    )
    .unwrap();
    let AgentFrame::Identify(id) = f else { panic!() };
    assert_eq!(id.agent_id, "a1");
    assert_eq!(id.capabilities, vec!["rust"]);
    assert_eq!(id.pm2_info.unwrap().restart_count, Some(1));
}

#[test]
fn errors_name_the_field() {
    let e = parse_agent_frame(r#"{"type":"task_complete","task_id":5}"#).unwrap_err();
    let FrameError::Invalid { message_type, errors } = e else { panic!() };
    assert_eq!(message_type, "task_complete");
    assert!(errors.contains(&"task_id: expected string, got number".to_string()), "{errors:?}");
    assert!(errors.contains(&"generation: required".to_string()), "{errors:?}");
}

#[test]
fn limits_are_enforced() {
    let long = "x".repeat(MAX_AGENT_ID + 1);
    let e = parse_agent_frame(&json!({"type":"identify","agent_id":long,"token":"t"}).to_string()).unwrap_err();
    assert!(matches!(e, FrameError::Invalid { ref errors, .. } if errors[0].starts_with("agent_id: longer")));
    let reason = "r".repeat(MAX_REASON + 1);
    let e = parse_agent_frame(&json!({"type":"task_failed","task_id":"t","generation":1,"reason":reason}).to_string());
    assert!(e.is_err());
}

#[test]
fn unknown_and_malformed() {
    assert!(matches!(parse_agent_frame("{nope"), Err(FrameError::Malformed(_))));
    assert!(matches!(parse_agent_frame("[1]"), Err(FrameError::Malformed(_))));
    assert_eq!(parse_agent_frame(r#"{"a":1}"#), Err(FrameError::MissingType));
    assert!(matches!(parse_agent_frame(r#"{"type":"launch"}"#), Err(FrameError::UnknownType(t)) if t == "launch"));
}

#[test]
fn nulls_and_state_report_without_task() {
    let f = parse_agent_frame(r#"{"type":"task_failed","task_id":"t","generation":2,"reason":null}"#).unwrap();
    assert!(matches!(f, AgentFrame::TaskFailed { reason: None, generation: 2, .. }));
    let f = parse_agent_frame(r#"{"type":"state_report","task_id":null}"#).unwrap();
    assert!(matches!(f, AgentFrame::StateReport { task_id: None, .. }));
}

#[test]
fn task_ids_can_never_be_paths() {
    for ok in ["task-0123abcd", "T1", "a.b_c-d", &"x".repeat(MAX_TASK_ID)] {
        assert_eq!(check_task_id(ok), Ok(()), "{ok}");
    }
    for bad in ["", ".", "..", "../../victim/data", "a/b", ".hidden", "-x", "a\nb", "a b", "é", &"x".repeat(129)] {
        assert!(check_task_id(bad).is_err(), "{bad:?}");
    }
    let e = parse_agent_frame(r#"{"type":"task_accepted","task_id":"../../etc/passwd"}"#).unwrap_err();
    assert!(matches!(e, FrameError::Invalid { ref errors, .. } if errors[0].starts_with("task_id: must be")));
    let e = parse_agent_frame(r#"{"type":"state_report","task_id":"a/b"}"#).unwrap_err();
    assert!(matches!(e, FrameError::Invalid { .. }));
}

#[test]
fn hub_frames_serialize_like_v1() {
    let f = HubFrame::TaskAck { task_id: "t".into(), status: AckStatus::Accepted };
    assert_eq!(serde_json::to_value(&f).unwrap(), json!({"type":"task_ack","task_id":"t","status":"accepted"}));
    let mut extra = Map::new();
    extra.insert("repo".into(), json!("r"));
    let a = HubFrame::TaskAssign(TaskAssign {
        task_id: "t".into(),
        description: "d".into(),
        metadata: json!({}),
        generation: 1,
        assigned_at: 2,
        priority: None,
        resume_session: Some("s-1".into()),
        extra,
    });
    let v = serde_json::to_value(&a).unwrap();
    assert_eq!(v["type"], "task_assign");
    assert_eq!(v["repo"], "r");
    assert_eq!(v["resume_session"], "s-1");
    assert_eq!(parse_hub_frame(&a.to_text()).unwrap(), a);
}

#[test]
fn closed_sets_are_enums_with_v1_strings() {
    let f = HubFrame::StateReportAck { task_id: None, action: ReportAction::Abort };
    assert_eq!(serde_json::to_value(&f).unwrap(), json!({"type":"state_report_ack","task_id":null,"action":"abort"}));
    let f = HubFrame::TaskAck { task_id: "t".into(), status: AckStatus::DeadLetter };
    assert_eq!(serde_json::to_value(&f).unwrap()["status"], "dead_letter");
    let e: HubFrame = parse_hub_frame(r#"{"type":"error","error":"stale_generation"}"#).unwrap();
    assert!(matches!(e, HubFrame::Error(ErrorFrame { error: FrameErrorCode::StaleGeneration, .. })));
    let e: HubFrame = parse_hub_frame(r#"{"type":"error","error":"brand_new"}"#).unwrap();
    assert!(matches!(e, HubFrame::Error(ErrorFrame { error: FrameErrorCode::Unknown, .. })));
}

mod props {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const TYPES: &[&str] = &[
        "identify",
        "ping",
        "status",
        "task_accepted",
        "task_rejected",
        "task_progress",
        "wake_result",
        "task_complete",
        "task_failed",
        "task_recovering",
        "state_report",
        "agent_restarting",
        "resource_report",
        "teleport",
    ];
    const FIELDS: &[&str] = &[
        "agent_id",
        "token",
        "task_id",
        "generation",
        "status",
        "reason",
        "error",
        "result",
        "progress",
        "capabilities",
        "attempt",
        "process_info",
        "pm2_info",
        "cpu_percent",
        "last_status",
        "name",
    ];

    /// Any JSON value, a few levels deep.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            // Binary fractions: serde_json (without float_roundtrip) may round other decimals.
            any::<i32>().prop_map(|n| Value::from(n as f64 / 1024.0)),
            "\\PC{0,40}".prop_map(Value::from),
            "[a-z0-9./-]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A frame-shaped object: a known (or unknown) type and known fields with any values.
    fn frame() -> impl Strategy<Value = Value> {
        (0..TYPES.len(), proptest::collection::vec((0..FIELDS.len(), json_value()), 0..6)).prop_map(|(t, fields)| {
            let mut m = Map::new();
            m.insert("type".into(), json!(TYPES[t]));
            for (f, v) in fields {
                m.insert(FIELDS[f].into(), v);
            }
            Value::Object(m)
        })
    }

    proptest! {
        // Failures are reported, not written into the source tree.
        #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any text: parsed or refused with an error frame, never a panic.
        #[test]
        fn any_text_is_parsed_or_refused(text in "\\PC{0,200}") {
            if let Err(e) = parse_agent_frame(&text) {
                prop_assert!(matches!(e.to_frame(), HubFrame::Error(_)));
            }
        }

        /// Any frame-shaped object: a valid frame survives a round trip unchanged, and an
        /// invalid one is refused with every error naming a field.
        #[test]
        fn any_frame_roundtrips_or_names_its_fields(v in frame()) {
            match parse_agent_frame(&v.to_string()) {
                Ok(f) => prop_assert_eq!(parse_agent_frame(&f.to_text()).ok(), Some(f)),
                Err(FrameError::Invalid { errors, .. }) => {
                    prop_assert!(!errors.is_empty());
                    for e in &errors {
                        prop_assert!(FIELDS.iter().chain(["type"].iter()).any(|f| e.starts_with(f)) || e.contains("missing field") || e.contains("invalid"), "{}", e);
                    }
                }
                Err(FrameError::UnknownType(t)) => prop_assert_eq!(t, "teleport"),
                Err(other) => prop_assert!(false, "{:?}", other),
            }
        }

        /// The hub's frames, as a sidecar reads them: anything parses or errors, never panics.
        #[test]
        fn any_hub_text_is_parsed_or_refused(v in json_value()) {
            let _ = parse_hub_frame(&v.to_string());
        }

        /// Task ids: accepted only in the safe form, whatever the input.
        #[test]
        fn task_ids_are_safe_or_refused(id in "\\PC{0,140}") {
            if check_task_id(&id).is_ok() {
                prop_assert!(!id.contains('/') && !id.starts_with('.') && id.len() <= MAX_TASK_ID);
                prop_assert!(id.chars().all(|c| c.is_ascii_graphic()));
            }
        }
    }
}

#[test]
fn agent_frames_carry_protocol_version() {
    let v: Value = serde_json::from_str(&AgentFrame::Ping.to_text()).unwrap();
    assert_eq!(v, json!({"type":"ping","protocol_version":1}));
}
