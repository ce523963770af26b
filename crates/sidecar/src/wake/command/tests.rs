//! The lexer as a table, against the real `sh`, and as properties.

use super::*;
use proptest::prelude::*;
use std::process::Command as Process;

fn script(cmd: &str) -> String {
    WakeCommand::compile(cmd).unwrap_or_else(|e| panic!("{cmd:?}: {e:?}")).script
}

fn refused(cmd: &str) -> String {
    match WakeCommand::compile(cmd) {
        Ok(c) => panic!("{cmd:?} compiled to {:?}", c.script),
        Err(e) => e.join("; "),
    }
}

#[test]
fn placeholders_become_references_for_their_context() {
    assert_eq!(script("run ${TASK_ID}"), r#"run "${AGENTCOM_TASK_ID}""#);
    assert_eq!(script(r#"echo "Task: ${TASK_JSON}""#), r#"echo "Task: ${AGENTCOM_TASK_JSON}""#);
    assert_eq!(script("echo 'a ${TASK_DESCRIPTION} b'"), r#"echo 'a '"${AGENTCOM_TASK_DESCRIPTION}"' b'"#);
    assert_eq!(script(r#"x"a"'b'${TASK_ID}y"#), r#"x"a"'b'"${AGENTCOM_TASK_ID}"y"#);
    // AgentCom's own config.json.example.
    let agentcom = r#"openclaw agent --message "Task: ${TASK_JSON}" --session-id ${TASK_ID}"#;
    let c = WakeCommand::compile(agentcom).unwrap();
    assert_eq!(
        c.script,
        r#"openclaw agent --message "Task: ${AGENTCOM_TASK_JSON}" --session-id "${AGENTCOM_TASK_ID}""#
    );
    assert!(c.uses(Placeholder::TaskJson) && c.uses(Placeholder::TaskId) && !c.uses(Placeholder::TaskDescription));
}

#[test]
fn text_without_placeholders_is_unchanged() {
    for cmd in [
        "claude -p \"$AGENTCOM_TASK_DESCRIPTION\" # ${TASK_ID} in a comment",
        "cat <<'EOF'\nhello $x\nEOF\necho done",
        "a=$(date); echo \"$a\" `hostname` $((1+2)) ${HOME:-/} $'x' $\"y\"",
        "case $x in a) echo a;; esac",
        "",
    ] {
        assert_eq!(script(cmd), cmd);
    }
}

#[test]
fn unsafe_contexts_are_refused_with_their_position() {
    let cases = [
        ("echo $(cat ${TASK_ID})", "line 1, column 12", "inside $(...)"),
        ("echo `echo ${TASK_ID}`", "line 1, column 12", "inside backticks"),
        ("echo \"$(printf %s \"${TASK_DESCRIPTION}\")\"", "column 20", "inside $(...)"),
        ("echo $(( ${TASK_ID} + 1 ))", "column 10", "inside $((...))"),
        ("eval \"echo ${TASK_DESCRIPTION}\"", "column 12", "an argument of eval"),
        ("cd /x && eval ${TASK_ID}", "column 15", "an argument of eval"),
        ("sh -c \"echo ${TASK_DESCRIPTION}\"", "column 13", "the -c script of sh"),
        ("bash -lc 'echo ${TASK_DESCRIPTION}'", "column 16", "the -c script of bash"),
        ("nohup env A=1 timeout 5 sh -ec ${TASK_JSON}", "column 32", "the -c script of sh"),
        ("sudo -u bob python3 -c \"print('${TASK_DESCRIPTION}')\"", "column 32", "the -c program of python3"),
        ("ssh host run ${TASK_ID}", "column 14", "an argument of ssh"),
        ("perl -ne 'print \"${TASK_ID}\"'", "column 18", "the -e program of perl"),
        ("awk 'BEGIN{print \"${TASK_ID}\"}'", "column 19", "the program of awk"),
        ("echo ${TASK_ID:-x}", "column 6", "operators"),
        ("echo ${#TASK_DESCRIPTION}", "column 6", "operators"),
        ("echo ${X:-${TASK_ID}}", "column 11", "inside ${...}"),
        ("cat <<EOF\n${TASK_DESCRIPTION}\nEOF", "line 2, column 1", "here-document"),
        ("cat <<-'E'\n\tx ${TASK_ID}\n\tE\necho ok", "line 2, column 4", "here-document"),
        ("echo \\${TASK_ID}", "column 6", "escaped placeholder"),
        ("echo $'a' ${TASK_ID}", "column 6", "$'...'"),
        ("echo \"unterminated ${TASK_ID}", "column 6", "never closed"),
        ("echo 'unterminated", "column 6", "never closed"),
        ("x\necho $(cat ${TASK_ID}", "line 2, column 6", "never closed"),
    ];
    let mut wrong = Vec::new();
    for (cmd, position, why) in cases {
        let e = refused(cmd);
        if !(e.contains(position) && e.contains(why)) {
            wrong.push(format!("{cmd:?}: {e}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn data_arguments_of_code_runners_stay_allowed() {
    // Positional arguments after a -c script are data ($0, $1...), as is a script file name.
    for cmd in [
        "sh -c 'printf %s \"$1\"' sh ${TASK_DESCRIPTION}",
        "bash ./agent.sh ${TASK_ID}",
        "python3 agent.py -c ${TASK_ID}",
        "awk -v id=${TASK_ID} -f prog.awk",
        "sed -e 's/a/b/' ${TASK_ID}.txt",
        "echo eval ${TASK_ID}",
        "X=${TASK_ID} ./run > ${TASK_ID}.log",
        "for w in ${TASK_ID}; do echo \"$w\"; done",
    ] {
        assert!(WakeCommand::compile(cmd).is_ok(), "{cmd:?}: {:?}", WakeCommand::compile(cmd));
    }
}

/// Runs `sh -c` on the compiled command with the placeholders' values in the environment,
/// in `dir`; the command writes what it received to `dir/out`.
fn run_sh(compiled: &WakeCommand, dir: &std::path::Path, value: &str) -> Vec<u8> {
    let out = dir.join("out");
    let _ = std::fs::remove_file(&out);
    let status = Process::new("sh")
        .arg("-c")
        .arg(&compiled.script)
        .current_dir(dir)
        .env("AGENTCOM_TASK_ID", value)
        .env("AGENTCOM_TASK_JSON", value)
        .env("AGENTCOM_TASK_DESCRIPTION", value)
        .env("AGENTCOM_RESUME_SESSION", value)
        .env("HOME", dir)
        .status()
        .unwrap();
    assert!(status.success(), "{:?} failed for {value:?}", compiled.script);
    std::fs::read(out).unwrap()
}

/// The hostile payloads of issue 9, each placeholder, each quoting context, through the real
/// `sh`: the command receives exactly the payload's bytes and nothing runs.
#[test]
fn hostile_text_reaches_sh_verbatim_in_every_context() {
    let big: String = (0..65_536).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let payloads: Vec<String> = [
        "$(touch pwned)",
        "`touch pwned`",
        "\"; touch pwned; \"",
        "'\"$(touch pwned)\"'",
        "\\'$(touch pwned)",
        "'; touch pwned; '",
        "line one\nline two; touch pwned\n",
        "\u{1}\u{2}\u{7f}\u{1b}[31m\u{ff}binary\t\r",
        "unicode: żółć 🚀 ∀x∈ℝ \u{202e}",
        "$HOME ${HOME} ~ $0 $$",
        "* ? [a-z] .* /*",
        "\\ \\\\ \\n \\$ \\\" \\'",
        "%s %d %n %% \\x41",
        "}{ ${ } ) ( ;; & | < > >> <<EOF",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([big])
    .collect();
    // `printf %s` with every form of context around the placeholder.
    let contexts = [
        ("unquoted", "printf %s {P} > out"),
        ("double", "printf %s \"{P}\" > out"),
        ("single", "printf %s '{P}' > out"),
        ("mixed", "printf %s \"a\"'b'{P}'c'\"d\" > out"),
        ("inner", "printf %s \"<{P}>\"'<{P}>' > out"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for p in Placeholder::ALL {
        for (name, template) in contexts {
            let compiled = WakeCommand::compile(&template.replace("{P}", p.text())).unwrap();
            for payload in &payloads {
                let got = run_sh(&compiled, dir.path(), payload);
                let want = match name {
                    "mixed" => format!("ab{payload}cd"),
                    "inner" => format!("<{payload}><{payload}>"),
                    _ => payload.clone(),
                };
                assert!(
                    got == want.as_bytes(),
                    "{} in {name}: {payload:?} arrived as {:?}",
                    p.text(),
                    String::from_utf8_lossy(&got)
                );
                assert!(!dir.path().join("pwned").exists(), "{payload:?} ran in {name}");
            }
        }
    }
}

#[test]
fn agentcom_example_delivers_the_task_json_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    let compiled =
        WakeCommand::compile(r#"printf '%s\n' agent --message "Task: ${TASK_JSON}" --session-id ${TASK_ID} > out"#)
            .unwrap();
    let json = r#"{"task_id":"t-1","description":"it's \"$(touch pwned)\" `x`"}"#;
    let got = run_sh(&compiled, dir.path(), json);
    assert_eq!(String::from_utf8(got).unwrap(), format!("agent\n--message\nTask: {json}\n--session-id\n{json}\n"));
    assert!(!dir.path().join("pwned").exists());
}

// ---- properties ----------------------------------------------------------------------------

/// One piece of a generated word.
#[derive(Debug, Clone)]
enum Piece {
    Bare(String),
    Double(Vec<Result<String, Placeholder>>),
    Single(Vec<Result<String, Placeholder>>),
    Placeholder(Placeholder),
}

fn placeholder() -> impl Strategy<Value = Placeholder> {
    prop_oneof![Just(Placeholder::TaskId), Just(Placeholder::TaskJson), Just(Placeholder::TaskDescription)]
}

fn piece() -> impl Strategy<Value = Piece> {
    let inner =
        |text: &'static str| prop::collection::vec(prop_oneof![text.prop_map(Ok), placeholder().prop_map(Err)], 0..4);
    prop_oneof![
        "[a-zA-Z0-9._/=:,+-]{1,6}".prop_map(Piece::Bare),
        inner("[^\"\\\\$`]{0,6}").prop_map(Piece::Double),
        inner("[^']{0,6}").prop_map(Piece::Single),
        placeholder().prop_map(Piece::Placeholder),
    ]
}

fn render(words: &[Vec<Piece>], values: &dyn Fn(Placeholder) -> String) -> (String, Vec<String>) {
    let mut cmd = String::from("printf");
    let mut argv = Vec::new();
    for w in words {
        cmd.push(' ');
        let mut arg = String::new();
        for p in w {
            let part = |parts: &Vec<Result<String, Placeholder>>, cmd: &mut String, arg: &mut String| {
                for x in parts {
                    match x {
                        Ok(t) => {
                            cmd.push_str(t);
                            arg.push_str(t);
                        }
                        Err(p) => {
                            cmd.push_str(p.text());
                            arg.push_str(&values(*p));
                        }
                    }
                }
            };
            match p {
                Piece::Bare(t) => {
                    cmd.push_str(t);
                    arg.push_str(t);
                }
                Piece::Placeholder(p) => {
                    cmd.push_str(p.text());
                    arg.push_str(&values(*p));
                }
                Piece::Double(parts) => {
                    cmd.push('"');
                    part(parts, &mut cmd, &mut arg);
                    cmd.push('"');
                }
                Piece::Single(parts) => {
                    cmd.push('\'');
                    part(parts, &mut cmd, &mut arg);
                    cmd.push('\'');
                }
            }
        }
        argv.push(arg);
    }
    (cmd, argv)
}

/// Expands the words of a compiled command the way `sh` does, for the forms the generator and
/// the compiler produce: bare text, `'...'`, and `"..."` holding text and `${NAME}`.
fn expand(script: &str, env: &dyn Fn(&str) -> String) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = script.chars().peekable();
    let mut word: Option<String> = None;
    while let Some(c) = chars.next() {
        match c {
            ' ' => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    w.push(c);
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '$' if chars.peek() == Some(&'{') => {
                            chars.next();
                            let name: String = chars.by_ref().take_while(|c| *c != '}').collect();
                            w.push_str(&env(&name));
                        }
                        c => w.push(c),
                    }
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words.into_iter().skip(1).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any string: the lexer never panics, and what it accepts holds no placeholder any more
    /// (compiling its output again changes nothing).
    #[test]
    fn lexer_never_panics_and_leaves_no_placeholder(
        cmd in prop::collection::vec(prop_oneof![
            Just("${TASK_ID}".to_string()), Just("${TASK_JSON}".to_string()), Just("${TASK_DESCRIPTION}".to_string()),
            Just("${TASK_ID".to_string()), Just("$(".to_string()), Just("$((".to_string()), Just("<<".to_string()),
            Just("<<-".to_string()), Just("eval ".to_string()), Just("sh -c ".to_string()), Just("EOF".to_string()),
            "[ \\n\\t'\"`$(){}#;&|<>\\\\a-z=-]{1,3}", "\\PC{0,2}",
        ], 0..24).prop_map(|v| v.concat())
    ) {
        if let Ok(c) = WakeCommand::compile(&cmd) {
            let again = WakeCommand::compile(&c.script).expect("a compiled command compiles again");
            prop_assert_eq!(&again.script, &c.script);
            prop_assert!(Placeholder::ALL.iter().all(|p| !again.uses(*p)));
        }
    }

    /// Generated commands of every quoting form with placeholders compile, and expanding the
    /// result with any task text gives exactly the words AgentCom's text substitution meant.
    #[test]
    fn compiled_words_carry_the_exact_text(
        words in prop::collection::vec(prop::collection::vec(piece(), 1..4), 1..4),
        id in "[a-zA-Z0-9][a-zA-Z0-9._-]{0,20}",
        json in "\\PC{0,40}",
        desc in any::<String>(),
    ) {
        let value = |p: Placeholder| match p {
            Placeholder::TaskId => id.clone(),
            Placeholder::TaskJson => json.clone(),
            Placeholder::TaskDescription => desc.clone(),
            Placeholder::SessionId => id.clone(),
        };
        let (cmd, want) = render(&words, &value);
        let compiled = WakeCommand::compile(&cmd).map_err(|e| TestCaseError::fail(format!("{cmd:?}: {e:?}")))?;
        let env = |name: &str| Placeholder::ALL.into_iter().find(|p| p.env_var() == name).map(value).unwrap_or_default();
        prop_assert_eq!(expand(&compiled.script, &env), want);
    }
}
