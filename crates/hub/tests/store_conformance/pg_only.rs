//! What only PostgreSQL has: migrations by several hubs at once, a deposed writer.

use super::*;

#[test]
fn migrations_run_by_several_hubs_at_once_end_at_one_version() {
    let pg = Postgres::start().unwrap();
    let reference = pg.database().unwrap();
    PgStore::open(&db(&reference), 0, TIMEOUT).unwrap();
    let schema = |url: &str| -> (i64, i32, i32, Vec<String>) {
        let mut c = pg_client(url);
        let row = c.query_one("SELECT COUNT(*), MIN(version), MAX(version) FROM agentcom_schema", &[]).unwrap();
        let tables = c
            .query("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        (row.get(0), row.get(1), row.get(2), tables)
    };
    let expected = schema(&reference);
    assert_eq!(expected.0, 1);
    for _ in 0..3 {
        let url = pg.database().unwrap();
        let start = std::sync::Barrier::new(6);
        std::thread::scope(|s| {
            let hubs: Vec<_> = (0..6)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        PgStore::open(&db(&url), 0, TIMEOUT).map(drop)
                    })
                })
                .collect();
            for h in hubs {
                h.join().unwrap().expect("every hub migrates or finds the schema migrated");
            }
        });
        assert_eq!(schema(&url), expected);
        let leaders: i64 = pg_client(&url).query_one("SELECT COUNT(*) FROM leader", &[]).unwrap().get(0);
        assert_eq!(leaders, 1);
    }
}

#[test]
fn a_deposed_writer_is_refused_and_writes_nothing() {
    let pg = Postgres::start().unwrap();
    let url = pg.database().unwrap();
    let mut old = PgStore::open(&db(&url), 7, TIMEOUT).unwrap();
    let set_term = |term: i64| {
        pg_client(&url).execute("UPDATE leader SET term = $1 WHERE id = 1", &[&term]).unwrap();
    };
    set_term(7);
    old.commit(&[insert("a", 1, TaskStatus::Queued)]).unwrap();
    // Another hub takes over.
    set_term(8);
    let mut h = head("a", 1, TaskStatus::Assigned);
    h.generation = 1;
    let batch = [
        insert("b", 2, TaskStatus::Queued),
        put_head(&h),
        transition("a", Some(TaskStatus::Queued), TaskStatus::Assigned, "assigned", 1),
        token("h", "x", 1),
        agent("x", 1),
        checkpoint("x", json!({}), 1),
        progress("a", 1, 1),
        usage("a", "x", 1, None, Some(1), None, None, None),
    ];
    match old.commit(&batch) {
        Err(StoreError::Deposed { term }) => assert_eq!(term, 7),
        other => panic!("expected Deposed, got {other:?}"),
    }
    let backend = Backend {
        name: "postgres",
        store: Box::new(old),
        reader: Box::new(PgReader::open(&db(&url), 1, TIMEOUT).unwrap()),
        raw: Raw::Pg(url.clone()),
    };
    assert_eq!(backend.reader.task("a").unwrap().unwrap().head.status, TaskStatus::Queued);
    for (table, rows) in [
        ("tasks", 1),
        ("transitions", 0),
        ("tokens", 0),
        ("agents", 0),
        ("checkpoints", 0),
        ("progress", 0),
        ("usage", 0),
    ] {
        assert_eq!(backend.rows(table), rows, "{table}");
    }
    assert_eq!(backend.sql("SELECT term FROM leader"), 8);
    // The new leader writes.
    let mut new = PgStore::open(&db(&url), 8, TIMEOUT).unwrap();
    new.commit(&batch).unwrap();
    assert_eq!(backend.reader.task("a").unwrap().unwrap().head.status, TaskStatus::Assigned);
}
