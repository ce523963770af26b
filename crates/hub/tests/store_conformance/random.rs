//! Random histories committed to every backend and compared with the model.

use super::*;

const AGENTS: [&str; 7] = ["a", "B", "a-1", "a_1", "Zed", "ärger", "a b"];
const MODELS: [&str; 5] = ["gpt-5", "Claude", "unknown", "m\u{0}x", "b"];
const REASONS: [&str; 5] = ["submitted by admin", "rejected by a: \u{0}", "ünïcode ✓", "", "line\nbreak"];

/// One step of a random history; indices pick from the pools and from the tasks so far.
#[derive(Debug, Clone)]
enum Op {
    Insert { status: usize, gap: i64 },
    Head { task: usize, status: usize, generation: u64, holder: Option<usize>, at: u64 },
    Outcome { task: usize, n: u64 },
    Transition { task: usize, to: usize, reason: usize, agent: Option<usize> },
    Progress { task: usize, generation: u64, lines: u64 },
    Usage { task: usize, agent: usize, at: u64, model: Option<usize>, tokens: [Option<u64>; 3], quarters: Option<u32> },
    Token { hash: usize, agent: usize, at: u64 },
    Revoke { agent: usize },
    Checkpoint { agent: usize, n: u64, at: u64 },
    Agent { agent: usize, seen: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let task = 0..16usize;
    let agent = 0..AGENTS.len();
    prop_oneof![
        3 => (0..7usize, 1..3i64).prop_map(|(status, gap)| Op::Insert { status, gap }),
        4 => (task.clone(), 0..7usize, 0..3u64, proptest::option::of(agent.clone()), 0..50u64)
            .prop_map(|(task, status, generation, holder, at)| Op::Head { task, status, generation, holder, at }),
        1 => (task.clone(), 0..4u64).prop_map(|(task, n)| Op::Outcome { task, n }),
        3 => (task.clone(), 0..7usize, 0..REASONS.len(), proptest::option::of(agent.clone()))
            .prop_map(|(task, to, reason, agent)| Op::Transition { task, to, reason, agent }),
        3 => (task.clone(), 0..3u64, prop_oneof![9 => 1..4u64, 1 => 95..125u64])
            .prop_map(|(task, generation, lines)| Op::Progress { task, generation, lines }),
        3 => (
            task.clone(),
            agent.clone(),
            0..4 * DAY_MS,
            proptest::option::of(0..MODELS.len()),
            [proptest::option::of(0..1000u64), proptest::option::of(0..1000u64), proptest::option::of(0..1000u64)],
            proptest::option::of(0..40u32),
        )
            .prop_map(|(task, agent, at, model, tokens, quarters)| Op::Usage { task, agent, at, model, tokens, quarters }),
        2 => (0..6usize, agent.clone(), 0..4u64).prop_map(|(hash, agent, at)| Op::Token { hash, agent, at }),
        1 => agent.clone().prop_map(|agent| Op::Revoke { agent }),
        1 => (agent.clone(), 0..3u64, 0..9u64).prop_map(|(agent, n, at)| Op::Checkpoint { agent, n, at }),
        1 => (agent, 0..9u64).prop_map(|(agent, seen)| Op::Agent { agent, seen }),
    ]
}

fn histories() -> impl Strategy<Value = Vec<Vec<Op>>> {
    proptest::collection::vec(proptest::collection::vec(op(), 1..10), 1..5)
}

/// Turns ops into the batches a core could send: a task is only touched after its insert
/// (or never inserted at all: `ghost`, whose changes touch nothing).
fn materialize(history: &[Vec<Op>]) -> (Vec<Vec<Mutation>>, Vec<String>) {
    let mut heads: Vec<TaskHead> = Vec::new();
    let mut seq = 0;
    let pick = |heads: &[TaskHead], i: usize| -> (String, i64) {
        match heads.get(i % (heads.len() + 1)) {
            Some(h) => (h.task_id.clone(), h.seq),
            None => ("ghost".to_string(), 0),
        }
    };
    let batches = history
        .iter()
        .map(|ops| {
            let mut batch = Vec::new();
            for op in ops {
                match *op {
                    Op::Insert { status, gap } => {
                        seq += gap;
                        let id = format!("t{}", heads.len());
                        batch.push(insert(&id, seq, TaskStatus::ALL[status]));
                        heads.push(head(&id, seq, TaskStatus::ALL[status]));
                    }
                    Op::Head { task, status, generation, holder, at } => {
                        let (id, seq) = pick(&heads, task);
                        let mut h = head(&id, seq, TaskStatus::ALL[status]);
                        h.generation = generation;
                        h.assigned_to = holder.map(|a| AGENTS[a].to_string());
                        h.updated_at = DAY0 + at;
                        h.last_error = Some(REASONS[task % REASONS.len()].to_string());
                        batch.push(put_head(&h));
                    }
                    Op::Outcome { task, n } => batch.push(outcome(&pick(&heads, task).0, json!({ "n": n }))),
                    Op::Transition { task, to, reason, agent } => {
                        let (id, _) = pick(&heads, task);
                        let Mutation::AddTransition { task_id, mut transition } =
                            transition(&id, None, TaskStatus::ALL[to], REASONS[reason], (task % 3) as u64)
                        else {
                            unreachable!()
                        };
                        transition.from = (to > 0).then(|| TaskStatus::ALL[to - 1]);
                        transition.agent_id = agent.map(|a| AGENTS[a].to_string());
                        batch.push(Mutation::AddTransition { task_id, transition });
                    }
                    Op::Progress { task, generation, lines } => {
                        let (id, _) = pick(&heads, task);
                        batch.extend((0..lines).map(|i| progress(&id, generation, i)));
                    }
                    Op::Usage { task, agent, at, model, tokens, quarters } => {
                        let (id, _) = pick(&heads, task);
                        // Costs in quarters of a dollar add up exactly in any order.
                        let cost = quarters.map(|q| f64::from(q) / 4.0);
                        let model = model.map(|m| MODELS[m]);
                        batch.push(usage(&id, AGENTS[agent], DAY0 + at, model, tokens[0], tokens[1], tokens[2], cost));
                    }
                    Op::Token { hash, agent, at } => batch.push(token(&format!("hash-{hash}"), AGENTS[agent], at)),
                    Op::Revoke { agent } => batch.push(revoke(AGENTS[agent])),
                    Op::Checkpoint { agent, n, at } => {
                        batch.push(checkpoint(AGENTS[agent], json!({ "n": n, "who": AGENTS[agent] }), at))
                    }
                    Op::Agent { agent: a, seen } => batch.push(agent(AGENTS[a], seen)),
                }
            }
            batch
        })
        .collect();
    let mut ids: Vec<String> = heads.into_iter().map(|h| h.task_id).collect();
    ids.push("ghost".into());
    (batches, ids)
}

/// Commits a random history to each backend (emptied first) and compares it with the model.
fn check_history(backends: &mut [Backend], history: &[Vec<Op>]) -> Result<(), TestCaseError> {
    let (batches, ids) = materialize(history);
    let mut model = Model::default();
    for b in backends.iter_mut() {
        b.clear();
    }
    for batch in &batches {
        for b in backends.iter_mut() {
            let committed = b.store.commit(batch);
            prop_assert!(committed.is_ok(), "{}: {:?}", b.name, committed);
        }
        model.commit(batch);
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut probe = Probe::new(&ids, &AGENTS);
    probe.agents.push("nobody".into());
    let expected = model.state(&probe);
    for b in backends.iter_mut() {
        let got = b.state(&probe);
        prop_assert_eq!(&got, &expected, "{} differs from the contract", b.name);
    }
    Ok(())
}

fn run_histories(cases: u32, backends: Vec<Backend>) {
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let backends = RefCell::new(backends);
    let (ran, mutations) = (Cell::new(0u32), Cell::new(0usize));
    let result = TestRunner::new(config).run(&histories(), |h| {
        ran.set(ran.get() + 1);
        mutations.set(mutations.get() + h.iter().map(Vec::len).sum::<usize>());
        check_history(&mut backends.borrow_mut(), &h)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(ran.get() >= cases, "{} cases ran", ran.get());
    assert!(mutations.get() >= cases as usize, "{} ops in {} cases", mutations.get(), ran.get());
}

#[test]
fn random_histories_on_sqlite_match_the_contract() {
    let dir = fast_tempdir();
    run_histories(1000, vec![Backend::sqlite(dir.path())]);
}

#[test]
fn random_histories_on_postgres_and_sqlite_match_the_contract() {
    let pg = Postgres::start().unwrap();
    let dir = fast_tempdir();
    run_histories(100, vec![Backend::sqlite(dir.path()), Backend::pg(&pg.database().unwrap())]);
}
