//! The reader against what an agent (or anyone with write access to the results dir) may put
//! there: FIFOs, symlinks to devices, directories, oversized files and endless lines.

use super::*;
use proptest::prelude::*;

#[test]
fn only_regular_files_are_read_and_nothing_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fifo = d.join("fifo.json");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    std::os::unix::fs::symlink("/dev/zero", d.join("zero.json")).unwrap();
    std::fs::write(d.join("target.json"), b"{}").unwrap();
    std::os::unix::fs::symlink(d.join("target.json"), d.join("link.json")).unwrap();
    std::fs::create_dir(d.join("dir.json")).unwrap();
    assert_eq!(read_result(&fifo, 100), Found::NotRegular("a FIFO"));
    assert_eq!(read_result(&d.join("zero.json"), 100), Found::NotRegular("a symbolic link"));
    assert_eq!(read_result(&d.join("link.json"), 100), Found::NotRegular("a symbolic link"));
    assert_eq!(read_result(&d.join("dir.json"), 100), Found::NotRegular("a directory"));
    assert_eq!(read_result(&d.join("none.json"), 100), Found::Missing);
    assert_eq!(read_progress(&fifo, ProgressCursor::default(), 100), Found::NotRegular("a FIFO"));
    assert_eq!(
        read_progress(&d.join("zero.json"), ProgressCursor::default(), 100),
        Found::NotRegular("a symbolic link")
    );
    assert_eq!(marker(&fifo), Found::NotRegular("a FIFO"));
    assert_eq!(marker(&d.join("zero.json")), Found::NotRegular("a symbolic link"));
    assert_eq!(marker(&d.join("target.json")), Found::Regular(()));
    assert_eq!(marker(&d.join("none")), Found::Missing);
}

#[test]
fn results_are_read_up_to_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.json");
    std::fs::write(&p, vec![b'x'; 100]).unwrap();
    assert!(matches!(read_result(&p, 100), Found::Regular(ResultBytes { ref bytes, .. }) if bytes.len() == 100));
    assert_eq!(read_result(&p, 99), Found::TooLarge(100));
}

fn lines(found: Found<ProgressLines>) -> ProgressLines {
    match found {
        Found::Regular(p) => p,
        other => panic!("{other:?}"),
    }
}

#[test]
fn progress_lines_are_bounded_and_long_ones_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.progress");
    let mut data = b"one\n".to_vec();
    data.extend(vec![b'x'; 5000]);
    data.extend(b"\ntwo\npart");
    std::fs::write(&p, &data).unwrap();
    let got = lines(read_progress(&p, ProgressCursor::default(), 1000));
    assert_eq!(got.lines, vec![b"one".to_vec(), b"two".to_vec()]);
    assert_eq!(got.skipped, 1);
    assert_eq!(got.cursor, ProgressCursor { offset: data.len() as u64 - 4, skipping: false });
    // The partial line is read once it is complete.
    std::fs::write(&p, [data.as_slice(), b"ial\n"].concat()).unwrap();
    let next = lines(read_progress(&p, got.cursor, 1000));
    assert_eq!(next.lines, vec![b"partial".to_vec()]);
    // A line still growing past the cap is skipped as it grows, never held whole.
    let q = dir.path().join("u.progress");
    std::fs::write(&q, vec![b'y'; 3000]).unwrap();
    let first = lines(read_progress(&q, ProgressCursor::default(), 1000));
    assert_eq!(
        (first.lines.len(), first.skipped, first.cursor),
        (0, 1, ProgressCursor { offset: 3000, skipping: true })
    );
    std::fs::write(&q, [vec![b'y'; 6000], b"\nafter\n".to_vec()].concat()).unwrap();
    let second = lines(read_progress(&q, first.cursor, 1000));
    assert_eq!(second.lines, vec![b"after".to_vec()]);
    assert!(!second.cursor.skipping);
}

/// What `read_progress` must return in one call, computed without files.
fn progress_model(data: &[u8], cap: usize) -> (Vec<Vec<u8>>, usize, ProgressCursor) {
    let mut lines = Vec::new();
    let mut skipped = 0;
    let mut offset = 0u64;
    let mut rest = data;
    while let Some(i) = rest.iter().position(|b| *b == b'\n') {
        if i <= cap {
            lines.push(rest[..i].to_vec());
        } else {
            skipped += 1;
        }
        offset += i as u64 + 1;
        rest = &rest[i + 1..];
    }
    let mut cursor = ProgressCursor { offset, skipping: false };
    if rest.len() > cap {
        skipped += 1;
        cursor = ProgressCursor { offset: data.len() as u64, skipping: true };
    }
    (lines, skipped, cursor)
}

/// A file in a temp dir of its own, removed when the dir is dropped (a static dir would never
/// be: statics are not dropped, and every run would leave one behind).
fn scratch(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    (dir, path)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any content, any cap: the whole file when it fits, `TooLarge` when it does not.
    #[test]
    fn result_reader_returns_exact_bytes_or_too_large(data in prop::collection::vec(any::<u8>(), 0..300), cap in 0usize..300) {
        let (_dir, p) = scratch("r.json");
        std::fs::write(&p, &data).unwrap();
        match read_result(&p, cap) {
            Found::Regular(r) => prop_assert!(data.len() <= cap && r.bytes == data),
            Found::TooLarge(n) => prop_assert!(data.len() > cap && n == data.len() as u64),
            other => prop_assert!(false, "{other:?}"),
        }
    }

    /// Any content of lines (newlines frequent, lines of any length), any cap: complete lines
    /// within the cap in order, longer ones skipped, a trailing partial line left or skipped.
    #[test]
    fn progress_reader_matches_its_model(
        data in prop::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..400),
        cap in 1usize..64,
    ) {
        let (_dir, p) = scratch("t.progress");
        std::fs::write(&p, &data).unwrap();
        let got = lines(read_progress(&p, ProgressCursor::default(), cap));
        let (want, skipped, cursor) = progress_model(&data, cap);
        prop_assert_eq!(got.lines, want);
        prop_assert_eq!(got.skipped, skipped);
        prop_assert_eq!(got.cursor, cursor);
    }
}

#[test]
fn small_files_are_read_as_hostile_and_a_rewrite_is_another_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fifo = d.join("t.needs-input");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    assert_eq!(read_small(&fifo, 100), Found::NotRegular("a FIFO"));
    std::os::unix::fs::symlink("/etc/passwd", d.join("t.usage")).unwrap();
    assert_eq!(read_small(&d.join("t.usage"), 100), Found::NotRegular("a symbolic link"));
    assert_eq!(read_small(&d.join("none"), 100), Found::Missing);
    let p = d.join("q.needs-input");
    std::fs::write(&p, b"{\"question\":\"a\"}").unwrap();
    let Found::Regular(first) = read_small(&p, 100) else { panic!() };
    assert_eq!(first.bytes, b"{\"question\":\"a\"}");
    let Found::Regular(again) = read_small(&p, 100) else { panic!() };
    assert_eq!((&again.bytes, &again.id), (&first.bytes, &first.id), "the same file, read again");
    assert!(again.age.is_some());
    assert_eq!(read_small(&p, 5), Found::TooLarge(16));
    // The agent writes the same words again, atomically: another file.
    let tmp = d.join(".q.tmp");
    std::fs::write(&tmp, b"{\"question\":\"a\"}").unwrap();
    std::fs::rename(&tmp, &p).unwrap();
    let Found::Regular(second) = read_small(&p, 100) else { panic!() };
    assert_eq!(second.bytes, first.bytes);
    assert_ne!(second.id, first.id);
}

#[test]
fn the_answer_is_written_atomically_and_never_through_a_planted_link() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let victim = d.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    // A link where the answer goes is replaced, not followed; so is one at the name a
    // predictable temp file would have.
    std::os::unix::fs::symlink(&victim, d.join("t.input")).unwrap();
    std::os::unix::fs::symlink(&victim, d.join(format!(".t.input.tmp-{}", std::process::id()))).unwrap();
    write_for_agent(d, "t.input", b"yes\n").unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(std::fs::read(d.join("t.input")).unwrap(), b"yes\n");
    assert!(!std::fs::symlink_metadata(d.join("t.input")).unwrap().file_type().is_symlink());
    write_for_agent(d, "t.input", b"no\n").unwrap();
    assert_eq!(std::fs::read(d.join("t.input")).unwrap(), b"no\n");
    let left: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // A directory where the answer goes: an error, nothing else touched.
    std::fs::create_dir(d.join("u.input")).unwrap();
    assert!(write_for_agent(d, "u.input", b"x\n").is_err());
}
