//! Scenarios every backend must read back as the model does.

use super::*;

#[test]
fn one_batch_with_every_kind_of_mutation() {
    let mut both = Both::new();
    let mut h = head("a", 1, TaskStatus::Queued);
    let mut batch = vec![insert("a", 1, TaskStatus::Queued)];
    // Several changes to one task in one batch: the last head wins.
    for (status, generation) in [(TaskStatus::Assigned, 1), (TaskStatus::Working, 1), (TaskStatus::Completed, 1)] {
        h.status = status;
        h.generation = generation;
        h.updated_at += 1;
        batch.push(put_head(&h));
    }
    h.assigned_to = Some("agent-1".into());
    h.completed_at = Some(DAY0 + 9);
    batch.push(put_head(&h));
    batch.extend([
        outcome("a", json!({"status": "success"})),
        transition("a", None, TaskStatus::Queued, "submitted by admin", 0),
        transition("a", Some(TaskStatus::Queued), TaskStatus::Assigned, "assigned to agent-1", 1),
        transition("a", Some(TaskStatus::Assigned), TaskStatus::Working, "accepted", 1),
        transition("a", Some(TaskStatus::Working), TaskStatus::Completed, "completed", 1),
        progress("a", 1, 1),
        progress("a", 1, 2),
        usage("a", "agent-1", DAY0 + DAY_MS + 5, Some("gpt-5"), Some(10), Some(5), None, Some(0.25)),
        token("hash-1", "agent-1", DAY0),
        checkpoint("agent-1", json!({"objective": "ship it"}), DAY0 + 3),
        agent("agent-1", DAY0 + 4),
    ]);
    both.commit(&batch);
    let expected_head = h.clone();
    both.each(|b| {
        let t = b.reader.task("a").unwrap().expect("the task");
        assert_eq!(t.head, expected_head, "{}", b.name);
        assert_eq!(b.store.head("a").unwrap().as_ref(), Some(&expected_head), "{}", b.name);
        assert_eq!(t.outcome.unwrap().result, Some(json!({"status": "success"})), "{}", b.name);
        assert_eq!(t.progress, Some(json!({"step": 2})), "{}", b.name);
        let u = t.usage.unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.total_tokens, u.cost_usd),
            (Some(10), Some(5), None, Some(0.25))
        );
        let reasons: Vec<String> = b.reader.transitions("a").unwrap().into_iter().map(|t| t.reason).collect();
        assert_eq!(reasons, ["submitted by admin", "assigned to agent-1", "accepted", "completed"], "{}", b.name);
        assert_eq!(b.reader.checkpoint("agent-1").unwrap(), Some((json!({"objective": "ship it"}), DAY0 + 3)));
        let snap = b.store.load(DAY0 + DAY_MS).unwrap();
        assert!(snap.open.is_empty(), "{}: a completed task is not open", b.name);
        assert_eq!(snap.counts.get(&TaskStatus::Completed), Some(&1), "{}", b.name);
        assert_eq!((snap.tokens.len(), snap.agents.len()), (1, 1), "{}", b.name);
        assert_eq!(snap.spend_today["agent-1"], (0.25, 15), "{}", b.name);
    });
    both.agree(&Probe::new(&["a"], &["agent-1"]));
}

#[test]
fn a_long_history_shows_its_newest_lines() {
    let mut both = Both::new();
    both.commit(&[insert("a", 1, TaskStatus::Working)]);
    let lines: Vec<Mutation> = (0..HISTORY_SHOWN + 5)
        .map(|i| transition("a", Some(TaskStatus::Working), TaskStatus::Working, &format!("line {i}"), 1))
        .collect();
    both.commit(&lines);
    both.each(|b| {
        let shown = b.reader.transitions("a").unwrap();
        assert_eq!(shown.len(), HISTORY_SHOWN as usize, "{}", b.name);
        assert_eq!(
            (shown[0].reason.as_str(), shown.last().unwrap().reason.as_str()),
            ("line 5", format!("line {}", HISTORY_SHOWN + 4).as_str()),
            "{}",
            b.name
        );
    });
    both.agree(&Probe::new(&["a"], &[]));
}

#[test]
fn progress_keeps_the_last_lines_and_shows_the_current_generation() {
    let mut both = Both::new();
    both.commit(&[insert("a", 1, TaskStatus::Working), insert("b", 2, TaskStatus::Working)]);
    // 150 lines for `a` over two batches; the oldest 50 go. Lines 0 and 49 carry generations of
    // their own, so whether they were kept shows through the reader.
    let line = |i: u64| {
        let generation = match i {
            0 => 5,
            49 => 6,
            50 => 7,
            _ => 0,
        };
        progress("a", generation, i)
    };
    both.commit(&(0..100).map(line).collect::<Vec<_>>());
    both.commit(&(100..150).map(line).chain([progress("b", 0, 1)]).collect::<Vec<_>>());
    let shown = |b: &mut Backend, generation: u64| {
        let mut h = head("a", 1, TaskStatus::Working);
        h.generation = generation;
        b.store.commit(&[put_head(&h)]).unwrap();
        b.reader.task("a").unwrap().unwrap().progress
    };
    both.each(|b| {
        assert_eq!(b.rows("progress"), PROGRESS_KEPT + 1, "{}: 100 of a's lines and b's one", b.name);
        assert_eq!(shown(b, 0), Some(json!({"step": 149})), "{}: the latest of the generation", b.name);
        assert_eq!(shown(b, 5), None, "{}: line 0 was dropped", b.name);
        assert_eq!(shown(b, 6), None, "{}: line 49 was dropped", b.name);
        assert_eq!(shown(b, 7), Some(json!({"step": 50})), "{}: line 50 was kept", b.name);
        assert_eq!(shown(b, 8), None, "{}: a new attempt starts without progress", b.name);
        assert_eq!(b.reader.task("b").unwrap().unwrap().progress, Some(json!({"step": 1})), "{}", b.name);
        // Every kept line of one attempt, oldest first, with its time (the task page's list).
        let lines = b.reader.progress("a", 0).unwrap();
        let steps: Vec<u64> = (51..150).filter(|i| *i != 0 && *i != 49).collect();
        let want: Vec<(u64, Value)> = steps.iter().map(|i| (DAY0 + i, json!({ "step": i }))).collect();
        assert_eq!(lines, want, "{}: generation 0's kept lines", b.name);
        assert_eq!(b.reader.progress("a", 7).unwrap(), vec![(DAY0 + 50, json!({"step": 50}))], "{}", b.name);
        assert_eq!(b.reader.progress("nope", 0).unwrap(), vec![], "{}", b.name);
    });
    let mut h = head("a", 1, TaskStatus::Working);
    h.generation = 8;
    both.model.commit(&[put_head(&h)]);
    both.agree(&Probe::new(&["a", "b"], &[]));
}

#[test]
fn usage_reports_by_agent_model_and_day_with_an_agent_filter() {
    let mut both = Both::new();
    let (d1, d2) = (DAY0 + DAY_MS + 10, DAY0 + 2 * DAY_MS + 10);
    both.commit(&[
        insert("t", 1, TaskStatus::Working),
        // Mixed case and non-ASCII: rows come in byte order, whatever the database's collation.
        usage("t", "a", DAY0 + 10, Some("gpt-5"), Some(100), Some(50), None, Some(1.5)),
        usage("t", "B", d1, Some("Claude"), Some(10), None, None, Some(0.25)),
        usage("t", "ärger", d1, None, None, None, Some(40), None),
        usage("t", "a", d2, Some("claude"), Some(1), Some(2), Some(99), Some(0.125)),
        usage("t", "a_1", d2, Some("unknown"), None, Some(3), None, None),
    ]);
    let row = |key: &str, reports, input, output, total, cost| UsageRow {
        key: key.into(),
        reports,
        input_tokens: input,
        output_tokens: output,
        total_tokens: total,
        cost_usd: cost,
    };
    let all = (0, DAY0 + 10 * DAY_MS);
    both.each(|b| {
        let by_agent = b.reader.usage(UsageBy::Agent, all.0, all.1, None).unwrap();
        let expected = vec![
            row("B", 1, 10, 0, 10, 0.25),
            row("a", 2, 101, 52, 249, 1.625),
            row("a_1", 1, 0, 3, 3, 0.0),
            row("ärger", 1, 0, 0, 40, 0.0),
        ];
        assert_eq!(by_agent, expected, "{}", b.name);
        let by_model: Vec<String> =
            b.reader.usage(UsageBy::Model, all.0, all.1, None).unwrap().into_iter().map(|r| r.key).collect();
        assert_eq!(by_model, ["Claude", "claude", "gpt-5", "unknown"], "{}: no model counts as unknown", b.name);
        let by_day = b.reader.usage(UsageBy::Day, all.0, all.1, Some("a")).unwrap();
        assert_eq!(
            by_day,
            vec![row("2024-10-04", 1, 100, 50, 150, 1.5), row("2024-10-06", 1, 1, 2, 99, 0.125)],
            "{}",
            b.name
        );
        let one_day = b.reader.usage(UsageBy::Agent, DAY0 + DAY_MS, DAY0 + 2 * DAY_MS, None).unwrap();
        assert_eq!(one_day.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["B", "ärger"], "{}", b.name);
        let spend = b.store.load(DAY0 + DAY_MS).unwrap().spend_today;
        assert_eq!(spend.get("a"), Some(&(0.125, 3)), "{}: only today's, input + output", b.name);
        assert_eq!(spend.get("ärger"), Some(&(0.0, 40)), "{}: the total when that is all", b.name);
        let t = b.reader.task("t").unwrap().unwrap().usage.unwrap();
        assert_eq!((t.input_tokens, t.output_tokens, t.total_tokens), (Some(111), Some(55), Some(139)), "{}", b.name);
        assert_eq!(t.cost_usd, Some(1.875), "{}", b.name);
    });
    both.agree(&Probe::new(&["t"], &["a", "B", "a_1", "ärger", "nobody"]));
}

#[test]
fn tokens_are_put_and_revoked_in_batch_order() {
    let mut both = Both::new();
    both.commit(&[token("h1", "a", 1), revoke("a"), token("h2", "a", 2), token("h3", "b", 3), token("h4", "b", 3)]);
    both.commit(&[revoke("b"), token("h4", "b", 4), token("h2", "c", 5)]);
    both.each(|b| {
        let tokens = canonical_tokens(b.store.load(0).unwrap().tokens);
        let seen: Vec<(&str, &str, u64)> =
            tokens.iter().map(|t| (t.hash.as_str(), t.agent_id.as_str(), t.created_at)).collect();
        assert_eq!(seen, [("h4", "b", 4), ("h2", "c", 5)], "{}: a put hash moves to its new agent", b.name);
    });
    both.agree(&Probe::new(&[], &["a", "b", "c"]));
}

#[test]
fn checkpoints_and_agents_keep_the_last_write() {
    let mut both = Both::new();
    both.commit(&[
        checkpoint("a", json!({"v": 1}), 1),
        checkpoint("a", json!({"v": 2, "nul": "x\u{0}y", "é": [1.5, null]}), 2),
        agent("a", 10),
        agent("b", 11),
        agent("a", 12),
    ]);
    both.commit(&[checkpoint("b", json!({}), 3)]);
    both.each(|b| {
        let (body, at) = b.reader.checkpoint("a").unwrap().unwrap();
        assert_eq!((body, at), (json!({"v": 2, "nul": "x\u{0}y", "é": [1.5, null]}), 2), "{}", b.name);
        assert_eq!(b.reader.checkpoint("nobody").unwrap(), None, "{}", b.name);
        let mut agents = b.store.load(0).unwrap().agents;
        agents.sort_by(|x, y| x.agent_id.cmp(&y.agent_id));
        let seen: Vec<(&str, u64)> = agents.iter().map(|a| (a.agent_id.as_str(), a.last_seen)).collect();
        assert_eq!(seen, [("a", 12), ("b", 11)], "{}", b.name);
    });
    both.agree(&Probe::new(&[], &["a", "b", "nobody"]));
}

#[test]
fn load_payloads_and_paged_listings() {
    let mut both = Both::new();
    let statuses = [
        TaskStatus::Queued,
        TaskStatus::Completed,
        TaskStatus::Queued,
        TaskStatus::Working,
        TaskStatus::DeadLetter,
        TaskStatus::Queued,
        TaskStatus::Cancelled,
        TaskStatus::WaitingRetry,
    ];
    // Sequence numbers with gaps, as after cancelled submissions.
    let batch: Vec<Mutation> =
        statuses.iter().enumerate().map(|(i, s)| insert(&format!("t{i}"), 3 * i as i64 + 2, *s)).collect();
    both.commit(&batch);
    both.each(|b| {
        let snap = b.store.load(0).unwrap();
        let open: Vec<&str> = snap.open.iter().map(|h| h.task_id.as_str()).collect();
        assert_eq!(open, ["t0", "t2", "t3", "t5", "t7"], "{}: open tasks in submission order", b.name);
        assert_eq!(snap.max_seq, 23, "{}", b.name);
        assert_eq!(snap.counts.get(&TaskStatus::Queued), Some(&3), "{}", b.name);
        assert_eq!(snap.counts.get(&TaskStatus::Assigned), None, "{}", b.name);
        let payloads = b.store.payloads(&["t1", "nope", "t6"]).unwrap();
        assert_eq!(payloads.len(), 2, "{}", b.name);
        assert_eq!(payloads["t6"].description, "do t6 ✓", "{}", b.name);
        assert_eq!(payloads["t6"].metadata["big"], json!(u64::MAX), "{}", b.name);
        let page = |status, before_seq, limit| b.reader.list_tasks(TaskQuery { status, before_seq, limit }).unwrap();
        let (first, more) = page(None, None, 3);
        assert_eq!((ids(&first), more), (vec!["t7", "t6", "t5"], true), "{}", b.name);
        let (next, more) = page(None, Some(first[2].head.seq), 3);
        assert_eq!((ids(&next), more), (vec!["t4", "t3", "t2"], true), "{}", b.name);
        let (last, more) = page(None, Some(next[2].head.seq), 3);
        assert_eq!((ids(&last), more), (vec!["t1", "t0"], false), "{}", b.name);
        let (queued, more) = page(Some(TaskStatus::Queued), None, 2);
        assert_eq!((ids(&queued), more), (vec!["t5", "t2"], true), "{}", b.name);
        let (queued, more) = page(Some(TaskStatus::Queued), Some(queued[1].head.seq), 2);
        assert_eq!((ids(&queued), more), (vec!["t0"], false), "{}", b.name);
        let (exact, more) = page(Some(TaskStatus::Working), None, 1);
        assert_eq!((ids(&exact), more), (vec!["t3"], false), "{}: a full last page has no next", b.name);
        assert_eq!(page(Some(TaskStatus::Assigned), None, 5), (vec![], false), "{}", b.name);
    });
    let names: Vec<String> = (0..statuses.len()).map(|i| format!("t{i}")).collect();
    both.agree(&Probe::new(&names.iter().map(String::as_str).collect::<Vec<_>>(), &[]));
}

#[test]
fn hostile_text_is_kept_the_same_way() {
    let mut both = Both::new();
    // An agent's rejection reason and model name are its own words: a NUL (which PostgreSQL's
    // text cannot hold) must not fail the commit, and both stores keep the same thing.
    let reason = "rejected by a: \u{0}bad\u{1b}[31m ✓ \"'; DROP TABLE tasks; --";
    both.commit(&[
        insert("t", 1, TaskStatus::Queued),
        transition("t", Some(TaskStatus::Assigned), TaskStatus::Queued, reason, 1),
        usage("t", "a", DAY0, Some("m\u{0}odel"), Some(1), None, None, None),
        progress("t", 0, 1),
    ]);
    both.each(|b| {
        let kept = &b.reader.transitions("t").unwrap()[0].reason;
        assert_eq!(kept, &reason.replace('\0', "\u{FFFD}"), "{}", b.name);
        let models = b.reader.usage(UsageBy::Model, 0, DAY0 + DAY_MS, None).unwrap();
        assert_eq!(models[0].key, "m\u{FFFD}odel", "{}", b.name);
        assert_eq!(b.rows("tasks"), 1, "{}", b.name);
    });
    both.agree(&Probe::new(&["t"], &["a"]));
}

#[test]
fn a_failed_batch_writes_nothing() {
    let mut both = Both::new();
    both.commit(&[insert("a", 1, TaskStatus::Queued)]);
    // The second insert of `a` breaks the batch after the rest of it was written.
    let bad = [token("h", "x", 1), progress("a", 0, 1), agent("x", 1), insert("a", 2, TaskStatus::Queued)];
    both.each(|b| {
        assert!(b.store.commit(&bad).is_err(), "{}", b.name);
        for table in ["tokens", "progress", "agents"] {
            assert_eq!(b.rows(table), 0, "{}: {table}", b.name);
        }
        // And the store goes on.
        b.store.commit(&[token("h2", "y", 2)]).unwrap();
    });
    both.model.commit(&[token("h2", "y", 2)]);
    both.agree(&Probe::new(&["a"], &["x", "y"]));
}

#[test]
fn a_task_keeps_the_latest_patch_of_its_change() {
    let mut both = Both::new();
    let patch = |generation: u64, text: &str, cut: bool| Mutation::PutPatch {
        task_id: "t".into(),
        patch: Box::new(StoredPatch { generation, at: DAY0 + generation, patch: text.into(), cut }),
    };
    both.commit(&[insert("t", 1, TaskStatus::Queued), patch(1, "diff --git a/x b/x\n+one\n", false)]);
    both.agree(&Probe::new(&["t"], &[]));
    // The next attempt's patch replaces it, NUL and all (an agent's file is its own bytes).
    both.commit(&[patch(2, "diff --git a/x b/x\n+t\u{0}wo\n", true)]);
    both.each(|b| {
        let p = b.reader.patch("t").unwrap().expect("a patch");
        assert_eq!(
            (p.generation, p.cut, p.patch.as_str()),
            (2, true, "diff --git a/x b/x\n+t\u{FFFD}wo\n"),
            "{}",
            b.name
        );
        assert_eq!(b.rows("patches"), 1, "{}", b.name);
    });
    both.agree(&Probe::new(&["t"], &[]));
}
