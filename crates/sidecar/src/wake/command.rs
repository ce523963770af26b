//! The wake command, compiled once at config load: lexed as POSIX `sh` words, every
//! placeholder (`${TASK_ID}`, `${TASK_JSON}`, `${TASK_DESCRIPTION}`, `${SESSION_ID}`) replaced by a reference to
//! an environment variable written for its quoting context, so the shell only ever *expands*
//! task text and never parses it.
//!
//! | placeholder context | becomes                           |
//! |---------------------|-----------------------------------|
//! | unquoted            | `"${AGENTCOM_TASK_ID}"` (one word) |
//! | inside `"..."`      | `${AGENTCOM_TASK_ID}`              |
//! | inside `'...'`      | `'"${AGENTCOM_TASK_ID}"'`          |
//!
//! The result of a parameter expansion is never parsed again by the shell, so the only places
//! where a reference is still unsafe are those that re-parse text as code: command
//! substitutions, backticks, arithmetic, `${...}` operators, here-documents, and the code
//! arguments of commands such as `eval`, `sh -c` or `python -c` ([`code_argument`]). A
//! placeholder there is a configuration error naming its line and column.

/// A placeholder and the environment variable that carries its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    TaskId,
    TaskJson,
    TaskDescription,
    /// The agent CLI's session of an earlier attempt to resume (empty when none).
    SessionId,
}

impl Placeholder {
    pub const ALL: [Placeholder; 4] =
        [Placeholder::TaskId, Placeholder::TaskJson, Placeholder::TaskDescription, Placeholder::SessionId];

    /// The text in a wake command, as AgentCom wrote it.
    pub fn text(self) -> &'static str {
        match self {
            Placeholder::TaskId => "${TASK_ID}",
            Placeholder::TaskJson => "${TASK_JSON}",
            Placeholder::TaskDescription => "${TASK_DESCRIPTION}",
            Placeholder::SessionId => "${SESSION_ID}",
        }
    }

    /// The environment variable the wake gets its value in.
    pub fn env_var(self) -> &'static str {
        match self {
            Placeholder::TaskId => "AGENTCOM_TASK_ID",
            Placeholder::TaskJson => "AGENTCOM_TASK_JSON",
            Placeholder::TaskDescription => "AGENTCOM_TASK_DESCRIPTION",
            Placeholder::SessionId => "AGENTCOM_RESUME_SESSION",
        }
    }

    fn bare_name(self) -> &'static str {
        &self.text()[2..self.text().len() - 1]
    }
}

/// A wake command ready to run as `sh -c <script>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WakeCommand {
    /// As written in the config.
    pub source: String,
    /// With every placeholder replaced by an environment reference.
    pub script: String,
    uses: [bool; 4],
}

impl WakeCommand {
    /// Lexes `source`; every unsafe or malformed spot is listed (`line L, column C: ...`).
    pub fn compile(source: &str) -> Result<WakeCommand, Vec<String>> {
        let mut lx = Lexer::new(source);
        lx.unquoted(Stop::Eof, None);
        lx.finish_heredocs();
        if lx.dollar_single.is_some() && lx.uses.iter().any(|u| *u) {
            let at = lx.dollar_single.unwrap_or(0);
            let where_ = lx.position(at);
            lx.errors.push(format!(
                "{where_}: $'...' quoting is read differently by dash and bash; with placeholders in the command use '...' or \"...\""
            ));
        }
        if !lx.errors.is_empty() {
            return Err(lx.errors);
        }
        Ok(WakeCommand { source: source.to_string(), script: lx.out, uses: lx.uses })
    }

    /// Whether the command refers to `p` (so its variable must fit in the environment).
    pub fn uses(&self, p: Placeholder) -> bool {
        self.uses[p as usize]
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    Eof,
    /// The `)` closing a `$(`.
    Paren,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Double,
    Single,
}

struct Heredoc {
    delimiter: String,
    strip_tabs: bool,
}

/// The simple command being read at the top level: the literal words so far (`None` for a
/// word with an expansion in it), to tell whether a placeholder is a code argument.
#[derive(Default)]
struct Command {
    words: Vec<Option<String>>,
    /// The word being read: its literal text so far, or `None` once it holds an expansion.
    word: Option<Option<String>>,
    /// The next word is a redirection target, not an argument.
    redirect: bool,
    /// The word being read is a redirection target.
    word_is_redirect: bool,
}

impl Command {
    fn begin_word(&mut self) {
        if self.word.is_none() {
            self.word = Some(Some(String::new()));
            self.word_is_redirect = std::mem::take(&mut self.redirect);
        }
    }
    fn literal(&mut self, c: char) {
        self.begin_word();
        if let Some(Some(w)) = &mut self.word {
            w.push(c);
        }
    }
    fn expansion(&mut self) {
        self.begin_word();
        self.word = Some(None);
    }
    fn end_word(&mut self) {
        if let Some(w) = self.word.take() {
            let reserved = self.words.is_empty()
                && matches!(
                    w.as_deref(),
                    Some("if" | "then" | "else" | "elif" | "do" | "while" | "until" | "!" | "{" | "time")
                );
            if !self.word_is_redirect && !reserved {
                self.words.push(w);
            }
            self.word_is_redirect = false;
        }
    }
    fn end(&mut self) {
        self.end_word();
        *self = Command::default();
    }
}

struct Lexer<'a> {
    src: &'a str,
    /// Byte offset of the next character.
    at: usize,
    out: String,
    errors: Vec<String>,
    uses: [bool; 4],
    cmd: Command,
    heredocs: Vec<Heredoc>,
    /// Where a `$'` was seen, if anywhere.
    dollar_single: Option<usize>,
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str) -> Lexer<'a> {
        Lexer {
            src,
            at: 0,
            out: String::with_capacity(src.len() + 64),
            errors: Vec::new(),
            uses: [false; 4],
            cmd: Command::default(),
            heredocs: Vec::new(),
            dollar_single: None,
        }
    }

    fn rest(&self) -> &'a str {
        &self.src[self.at..]
    }
    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }
    fn peek2(&self) -> Option<char> {
        self.rest().chars().nth(1)
    }
    /// Copies the next character to the output and returns it.
    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += c.len_utf8();
        self.out.push(c);
        Some(c)
    }

    /// `line L, column C` (1-based, in characters) of byte offset `at`.
    fn position(&self, at: usize) -> String {
        let before = &self.src[..at];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        format!("line {line}, column {col}")
    }

    fn error(&mut self, at: usize, what: String) {
        let where_ = self.position(at);
        self.errors.push(format!("{where_}: {what}"));
    }

    /// The placeholder starting at the current position, if any.
    fn placeholder_here(&self) -> Option<Placeholder> {
        Placeholder::ALL.into_iter().find(|p| self.rest().starts_with(p.text()))
    }

    /// Replaces the placeholder at the current position for `quote`, or records why it cannot be.
    fn placeholder(&mut self, p: Placeholder, quote: Quote, code: Option<&'static str>) {
        let start = self.at;
        self.at += p.text().len();
        let reason = code.map(str::to_string).or_else(|| code_argument(&self.cmd.words, self.cmd.word.as_ref()));
        if let Some(reason) = reason {
            self.error(
                start,
                format!(
                    "{} is {reason}, where its text would run as code; pass task text as data (\"${}\" as a plain argument, or the file in $AGENTCOM_TASK_FILE)",
                    p.text(),
                    p.env_var()
                ),
            );
            self.out.push_str(p.text());
            return;
        }
        self.uses[p as usize] = true;
        let var = p.env_var();
        match quote {
            Quote::None => self.out.push_str(&format!("\"${{{var}}}\"")),
            Quote::Double => self.out.push_str(&format!("${{{var}}}")),
            Quote::Single => self.out.push_str(&format!("'\"${{{var}}}\"'")),
        }
        self.cmd.expansion();
    }

    /// Reads unquoted text until `stop`. `code` is set inside a command substitution: every
    /// placeholder there is an error, and no simple command is tracked.
    fn unquoted(&mut self, stop: Stop, code: Option<&'static str>) {
        let opened = self.at.saturating_sub(2);
        let mut depth = 0usize;
        loop {
            let Some(c) = self.peek() else {
                if stop == Stop::Paren {
                    self.error(opened, "$( is never closed".into());
                }
                return;
            };
            match c {
                '\n' => {
                    self.cmd.end();
                    self.bump();
                    self.heredoc_bodies();
                }
                ' ' | '\t' => {
                    self.cmd.end_word();
                    self.bump();
                }
                ';' | '&' | '|' => {
                    self.cmd.end();
                    self.bump();
                }
                '(' => {
                    self.cmd.end();
                    if self.peek2() == Some('(') && code.is_none() {
                        // `(( ... ))`: arithmetic in bash, which evaluates expanded text as code.
                        self.bump();
                        self.bump();
                        self.arithmetic("inside (( ... ))");
                    } else {
                        depth += 1;
                        self.bump();
                    }
                }
                ')' => {
                    if depth == 0 && stop == Stop::Paren {
                        self.bump();
                        return;
                    }
                    depth = depth.saturating_sub(1);
                    self.cmd.end();
                    self.bump();
                }
                '<' | '>' => {
                    self.cmd.end_word();
                    let heredoc = self.rest().starts_with("<<") && !self.rest().starts_with("<<<");
                    if heredoc {
                        self.bump();
                        self.bump();
                        self.heredoc_operator();
                    } else {
                        while matches!(self.peek(), Some('<' | '>' | '&' | '|')) {
                            self.bump();
                        }
                        self.cmd.redirect = true;
                    }
                }
                '#' if self.cmd.word.is_none() => {
                    // A comment: the shell ignores it, placeholders included.
                    while self.peek().is_some_and(|c| c != '\n') {
                        self.bump();
                    }
                }
                '\\' => self.backslash(code),
                '\'' => {
                    self.cmd.begin_word();
                    self.single_quoted(code);
                }
                '"' => {
                    self.cmd.begin_word();
                    self.double_quoted(code);
                }
                '`' => {
                    self.cmd.expansion();
                    self.backticks();
                }
                '$' => self.dollar(Quote::None, code),
                _ => {
                    self.cmd.literal(c);
                    self.bump();
                }
            }
        }
    }

    /// `\x` outside quotes: `x` is literal (a newline continues the line).
    fn backslash(&mut self, code: Option<&'static str>) {
        let start = self.at;
        self.bump();
        if self.peek() == Some('$') && Placeholder::ALL.iter().any(|p| self.rest()[1..].starts_with(&p.text()[1..])) {
            self.error(start, "an escaped placeholder (\\${...}) is ambiguous; remove the backslash".into());
        }
        match self.bump() {
            Some('\n') | None => {}
            Some(c) if code.is_none() => self.cmd.literal(c),
            Some(_) => {}
        }
    }

    fn single_quoted(&mut self, code: Option<&'static str>) {
        let start = self.at;
        self.bump();
        loop {
            if let Some(p) = self.placeholder_here() {
                self.placeholder(p, Quote::Single, code);
                continue;
            }
            match self.bump() {
                None => return self.error(start, "this '...' is never closed".into()),
                Some('\'') => return,
                Some(c) => self.cmd.literal(c),
            }
        }
    }

    fn double_quoted(&mut self, code: Option<&'static str>) {
        let start = self.at;
        self.bump();
        loop {
            match self.peek() {
                None => return self.error(start, "this \"...\" is never closed".into()),
                Some('"') => {
                    self.bump();
                    return;
                }
                Some('\\') => {
                    let at = self.at;
                    self.bump();
                    if self.peek() == Some('$')
                        && Placeholder::ALL.iter().any(|p| self.rest()[1..].starts_with(&p.text()[1..]))
                    {
                        self.error(at, "an escaped placeholder (\\${...}) is ambiguous; remove the backslash".into());
                    }
                    if let Some(c) = self.bump() {
                        if !matches!(c, '$' | '`' | '"' | '\\' | '\n') {
                            self.cmd.literal('\\');
                        }
                        if c != '\n' {
                            self.cmd.literal(c);
                        }
                    }
                }
                Some('`') => {
                    self.cmd.expansion();
                    self.backticks();
                }
                Some('$') => self.dollar(Quote::Double, code),
                Some(c) => {
                    self.cmd.literal(c);
                    self.bump();
                }
            }
        }
    }

    /// At a `$`: a placeholder, `${...}`, `$(...)`, `$((...))`, `$'...'` or a plain `$name`.
    fn dollar(&mut self, quote: Quote, code: Option<&'static str>) {
        if let Some(p) = self.placeholder_here() {
            return self.placeholder(p, quote, code);
        }
        let start = self.at;
        match self.peek2() {
            Some('{') => {
                self.cmd.expansion();
                self.bump();
                self.bump();
                let named = Placeholder::ALL.into_iter().find(|p| {
                    let body = self.rest().trim_start_matches(['#', '!']);
                    body.starts_with(p.bare_name())
                        && !body[p.bare_name().len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                });
                if let Some(p) = named {
                    self.error(
                        start,
                        format!(
                            "{} with ${{...}} operators cannot be made safe; use ${{{}...}} instead",
                            p.text(),
                            p.env_var()
                        ),
                    );
                }
                self.braced(start);
            }
            Some('(') => {
                self.cmd.expansion();
                self.bump();
                self.bump();
                if self.peek() == Some('(') {
                    self.bump();
                    self.arithmetic("inside $((...))");
                } else {
                    let outer = std::mem::take(&mut self.cmd);
                    self.unquoted(Stop::Paren, Some("inside $(...)"));
                    self.cmd = outer;
                }
            }
            Some('\'') if quote == Quote::None => {
                self.cmd.expansion();
                self.dollar_single.get_or_insert(start);
                self.bump();
                self.bump();
                self.skip_escaped(start, '\'', Quote::Single, "inside $'...'", "this $'...' is never closed");
            }
            Some(c) if c.is_ascii_alphanumeric() || "_@*#?$!-".contains(c) => {
                self.cmd.expansion();
                self.bump();
            }
            _ => {
                // A lone `$` is literal.
                self.cmd.literal('$');
                self.bump();
            }
        }
    }

    /// The body of `${...}` after the brace, up to the matching `}`.
    fn braced(&mut self, start: usize) {
        const WHY: Option<&str> = Some("inside ${...}");
        loop {
            match self.peek() {
                None => return self.error(start, "this ${ is never closed".into()),
                Some('}') => {
                    self.bump();
                    return;
                }
                Some('\\') => {
                    self.bump();
                    self.bump();
                }
                Some('\'') => self.single_quoted(WHY),
                Some('"') => self.double_quoted(WHY),
                Some('`') => self.backticks(),
                Some('$') => self.dollar(Quote::None, WHY),
                Some(_) => {
                    self.bump();
                }
            }
        }
    }

    /// `$((` or `((`: up to the matching `))`.
    fn arithmetic(&mut self, why: &'static str) {
        let start = self.at.saturating_sub(2);
        let mut depth = 0usize;
        loop {
            match self.peek() {
                None => return self.error(start, "this (( is never closed".into()),
                Some(')') if depth == 0 && self.peek2() == Some(')') => {
                    self.bump();
                    self.bump();
                    return;
                }
                Some('(') => {
                    depth += 1;
                    self.bump();
                }
                Some(')') => {
                    depth = depth.saturating_sub(1);
                    self.bump();
                }
                Some('\'') => self.single_quoted(Some(why)),
                Some('"') => self.double_quoted(Some(why)),
                Some('`') => self.backticks(),
                Some('$') => self.dollar(Quote::None, Some(why)),
                Some('\\') => {
                    self.bump();
                    self.bump();
                }
                Some(_) => {
                    self.bump();
                }
            }
        }
    }

    /// `` `...` ``: the old command substitution; placeholders inside are errors.
    fn backticks(&mut self) {
        let start = self.at;
        self.bump();
        self.skip_escaped(start, '`', Quote::None, "inside backticks", "this `...` is never closed");
    }

    /// Up to the `close` that ends the construct begun at `start` (a backslash escapes the
    /// character after it); a placeholder on the way is an error `inside` it, as `quote` reads.
    fn skip_escaped(&mut self, start: usize, close: char, quote: Quote, inside: &'static str, never_closed: &str) {
        loop {
            if let Some(p) = self.placeholder_here() {
                self.placeholder(p, quote, Some(inside));
                continue;
            }
            match self.bump() {
                None => return self.error(start, never_closed.into()),
                Some('\\') => {
                    self.bump();
                }
                Some(c) if c == close => return,
                Some(_) => {}
            }
        }
    }

    /// After `<<`: an optional `-`, then the delimiter word (quoted or not).
    fn heredoc_operator(&mut self) {
        let strip_tabs = self.peek() == Some('-');
        if strip_tabs {
            self.bump();
        }
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.bump();
        }
        let mut delimiter = String::new();
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' | '\n' | ';' | '&' | '|' | '<' | '>' | '(' | ')' => break,
                '\'' | '"' => {
                    self.bump();
                    while let Some(q) = self.bump() {
                        if q == c {
                            break;
                        }
                        delimiter.push(q);
                    }
                }
                '\\' => {
                    self.bump();
                    if let Some(e) = self.bump() {
                        delimiter.push(e);
                    }
                }
                _ => {
                    delimiter.push(c);
                    self.bump();
                }
            }
        }
        self.heredocs.push(Heredoc { delimiter, strip_tabs });
    }

    /// After a newline: the bodies of the here-documents opened on the line just read.
    fn heredoc_bodies(&mut self) {
        for doc in std::mem::take(&mut self.heredocs) {
            loop {
                if self.at >= self.src.len() {
                    break;
                }
                let line_start = self.at;
                let line_end = self.rest().find('\n').map(|i| self.at + i).unwrap_or(self.src.len());
                let line = &self.src[line_start..line_end];
                let content = if doc.strip_tabs { line.trim_start_matches('\t') } else { line };
                if content == doc.delimiter {
                    self.out.push_str(line);
                    self.at = line_end;
                    if self.peek() == Some('\n') {
                        self.bump();
                    }
                    break;
                }
                for p in Placeholder::ALL {
                    if let Some(i) = line.find(p.text()) {
                        self.error(
                            line_start + i,
                            format!(
                                "{} is in a here-document, where it cannot be quoted; use ${} there",
                                p.text(),
                                p.env_var()
                            ),
                        );
                    }
                }
                self.out.push_str(line);
                self.at = line_end;
                if self.peek() == Some('\n') {
                    self.bump();
                }
            }
        }
    }

    fn finish_heredocs(&mut self) {
        // A here-document whose line never ended has no body: the shell reads none either.
        self.heredocs.clear();
    }
}

mod code;
use code::code_argument;

#[cfg(test)]
mod tests;
