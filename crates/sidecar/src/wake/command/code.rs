//! Which arguments of which commands are run as code: `eval`, a shell's `-c` script, an
//! interpreter's inline program, `ssh`'s remote command... A placeholder there would have its
//! text parsed as code by that command even though our shell only expanded it.

/// Why a placeholder in the word being read would be an argument its command runs as code:
/// `eval`, a shell's `-c` script, an interpreter's inline program, `ssh`'s remote command...
/// Wrappers that run their arguments as a command (`exec`, `env`, `nohup`, `timeout`, `sudo`,
/// `xargs`, ...) are looked through. Words with expansions are unknown and never match.
pub(super) fn code_argument(words: &[Option<String>], current: Option<&Option<String>>) -> Option<String> {
    let word = |i: usize| words.get(i).and_then(|w| w.as_deref());
    let mut i = 0;
    while word(i).is_some_and(is_assignment) {
        i += 1;
    }
    let name = loop {
        let name = basename(word(i)?);
        i += 1;
        // Options of a wrapper that take a value.
        let takes_value: &[&str] = match name {
            "exec" | "command" | "builtin" | "nohup" | "setsid" | "time" | "stdbuf" | "busybox" => &["-a"],
            "env" => &["-u", "-C", "--unset", "--chdir"],
            "nice" => &["-n", "--adjustment"],
            "timeout" => &["-s", "-k", "--signal", "--kill-after"],
            "sudo" | "doas" => &["-u", "-g", "-C", "-D", "-h", "-p", "-r", "-t", "-U", "--user", "--group"],
            "xargs" => &["-a", "-d", "-E", "-I", "-L", "-n", "-P", "-s", "--arg-file", "--delimiter"],
            _ => break name,
        };
        while let Some(w) = word(i) {
            if takes_value.contains(&w) {
                i += 2;
            } else if w.starts_with('-') && w.len() > 1 {
                if matches!(name, "sudo" | "doas") && matches!(w, "-s" | "-i" | "--shell" | "--login") {
                    return Some(format!("an argument of {name} {w}, which runs it through a shell"));
                }
                if name == "env" && (w == "-S" || w.starts_with("--split-string")) {
                    return Some("an argument of env -S, which splits it into a command".into());
                }
                i += 1;
            } else if name == "env" && is_assignment(w) {
                i += 1;
            } else {
                break;
            }
        }
        if name == "timeout" && word(i).is_some() {
            i += 1; // the duration
        }
    };
    let args: Vec<Option<&str>> = (i..words.len()).map(word).collect();
    let current = current.and_then(|w| w.as_deref()).unwrap_or("");
    let previous = args.last().copied().flatten();
    let only_options = args.iter().all(|w| w.is_some_and(|w| w.starts_with('-')));
    // The value of an inline-code flag: the word after it, or attached (`-cCODE`, `--eval=CODE`).
    let flag = |flags: &[&str], before_operands: bool| {
        let next = previous.is_some_and(|w| flags.contains(&w) || cluster(w, flags));
        let attached = flags.iter().any(|f| current.starts_with(f));
        (next || attached) && (!before_operands || only_options)
    };
    let what = |what: &str| Some(format!("{what} of {name}"));
    match name {
        "eval" | "ssh" | "watch" | "parallel" | "trap" | "alias" | "let" | "[[" => what("an argument"),
        "su" | "script" | "flock" if flag(&["-c", "--command"], false) => what("the -c command"),
        "declare" | "typeset" | "local" if args.iter().any(|w| w.is_some_and(|w| cluster(w, &["-i"]))) => {
            what("an integer assignment")
        }
        "sh" | "bash" | "dash" | "zsh" | "ksh" | "mksh" | "ash" | "yash" | "posh" | "fish" => {
            // The first operand after options that include `c` is the script.
            let (mut has_c, mut operands, mut options_done, mut j) = (false, 0, false, 0);
            while j < args.len() {
                match args[j] {
                    Some("--") if !options_done => options_done = true,
                    Some("-o" | "+o" | "-O" | "+O" | "--rcfile" | "--init-file") if !options_done => j += 1,
                    Some(w) if !options_done && w.starts_with("--") => {}
                    Some(w) if !options_done && w.len() > 1 && w.starts_with(['-', '+']) => {
                        has_c |= w.starts_with('-') && w.contains('c');
                    }
                    _ => {
                        operands += 1;
                        options_done = true;
                    }
                }
                j += 1;
            }
            (has_c && operands == 0).then(|| format!("the -c script of {name}"))
        }
        "python" | "python2" | "python3" | "pypy" | "pypy3" if flag(&["-c"], true) => what("the -c program"),
        "perl" | "ruby" if flag(&["-e", "-E"], true) => what("the -e program"),
        "node" | "nodejs" | "bun" if flag(&["-e", "-p", "--eval", "--print"], true) => what("the inline program"),
        "deno" if args.first() == Some(&Some("eval")) => what("the program"),
        "php" if flag(&["-r"], true) => what("the -r program"),
        "sed" | "gsed" if flag(&["-e", "--expression"], false) => what("the script"),
        "awk" | "gawk" | "mawk" | "nawk" | "sed" | "gsed" => {
            // Without -f (or sed's -e), the first operand is the program.
            if previous.is_some_and(|w| matches!(w, "-v" | "-F" | "-f" | "--assign" | "--field-separator" | "--file")) {
                return None;
            }
            let mut from_file = false;
            let mut j = 0;
            while let Some(w) = args.get(j).copied().flatten() {
                if !w.starts_with('-') || w == "-" {
                    break;
                }
                from_file |= w == "-f" || w.starts_with("--file") || (name.ends_with("sed") && w == "-e");
                j += if matches!(w, "-f" | "-F" | "-v" | "-e") { 2 } else { 1 };
            }
            (!from_file && j >= args.len()).then(|| format!("the program of {name}"))
        }
        _ => None,
    }
}

fn is_assignment(w: &str) -> bool {
    w.split_once('=').is_some_and(|(name, _)| {
        name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

fn basename(w: &str) -> &str {
    w.rsplit('/').next().unwrap_or(w)
}

/// Whether `w` is a single-dash option cluster holding one of `flags` (`-lc`, `-ne`).
fn cluster(w: &str, flags: &[&str]) -> bool {
    w.starts_with('-')
        && !w.starts_with("--")
        && flags.iter().any(|f| f.len() == 2 && f.starts_with('-') && !f.starts_with("--") && w[1..].contains(&f[1..]))
}
