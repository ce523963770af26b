//! A reader for EDN (extensible data notation), the format of the seeds' `ecosystem.edn`
//! files: nil, booleans, strings, characters, integers, floats, keywords, symbols, lists,
//! vectors, maps, sets, tagged elements (`#inst "..."`), discards (`#_`), comments and commas.
//! Every value carries its line, so errors in a definition name file:line. Written here rather
//! than taken from a crate: the maintained one (edn-format) keeps no positions on values and
//! pulls in uuid 0.8 / getrandom 0.2, chrono and bigdecimal. Hostile input is an error, never
//! a panic: nesting is limited and numbers are checked.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Edn {
    Nil,
    Bool(bool),
    Str(String),
    Char(char),
    Int(i64),
    Float(f64),
    /// Without its leading `:`.
    Keyword(String),
    Symbol(String),
    List(Vec<Node>),
    Vector(Vec<Node>),
    Map(Vec<(Node, Node)>),
    Set(Vec<Node>),
    Tagged(String, Box<Node>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Edn,
    /// 1-based line where the value starts.
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdnError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for EdnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Nesting deeper than this is refused (a hostile file cannot exhaust the stack).
const MAX_DEPTH: usize = 128;

struct Reader<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    line: usize,
}

fn is_delimiter(c: char) -> bool {
    c.is_whitespace() || c == ',' || "()[]{}\";".contains(c)
}

impl<'a> Reader<'a> {
    fn err<T>(&self, message: impl Into<String>) -> Result<T, EdnError> {
        Err(EdnError { line: self.line, message: message.into() })
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    /// Skips whitespace, commas and comments.
    fn skip(&mut self) {
        while let Some(&c) = self.chars.peek() {
            if c.is_whitespace() || c == ',' {
                self.bump();
            } else if c == ';' {
                while self.chars.peek().is_some_and(|c| *c != '\n') {
                    self.bump();
                }
            } else {
                break;
            }
        }
    }

    /// The next form, or None at a closing delimiter or the end (left in place).
    fn form(&mut self, depth: usize) -> Result<Option<Node>, EdnError> {
        if depth > MAX_DEPTH {
            return self.err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        loop {
            self.skip();
            let line = self.line;
            let Some(&c) = self.chars.peek() else { return Ok(None) };
            let value = match c {
                ')' | ']' | '}' => return Ok(None),
                '(' => {
                    self.bump();
                    Edn::List(self.seq(')', depth)?)
                }
                '[' => {
                    self.bump();
                    Edn::Vector(self.seq(']', depth)?)
                }
                '{' => {
                    self.bump();
                    self.map(line, depth)?
                }
                '"' => {
                    self.bump();
                    Edn::Str(self.string()?)
                }
                '\\' => {
                    self.bump();
                    Edn::Char(self.character()?)
                }
                '#' => {
                    self.bump();
                    match self.chars.peek() {
                        Some('{') => {
                            self.bump();
                            Edn::Set(self.seq('}', depth)?)
                        }
                        Some('_') => {
                            self.bump();
                            if self.form(depth + 1)?.is_none() {
                                return self.err("#_ discards nothing");
                            }
                            continue;
                        }
                        Some(c) if c.is_alphabetic() => {
                            let tag = self.token();
                            let Some(inner) = self.form(depth + 1)? else {
                                return self.err(format!("#{tag} tags nothing"));
                            };
                            Edn::Tagged(tag, Box::new(inner))
                        }
                        _ => return self.err("unexpected # (expected #{, #_ or a tag)"),
                    }
                }
                _ => self.atom()?,
            };
            return Ok(Some(Node { value, line }));
        }
    }

    fn seq(&mut self, close: char, depth: usize) -> Result<Vec<Node>, EdnError> {
        let open_line = self.line;
        let mut items = Vec::new();
        loop {
            if let Some(n) = self.form(depth + 1)? {
                items.push(n);
                continue;
            }
            return match self.bump() {
                Some(c) if c == close => Ok(items),
                Some(c) => self.err(format!("expected {close:?} but found {c:?}")),
                None => Err(EdnError { line: open_line, message: format!("unclosed collection: missing {close:?}") }),
            };
        }
    }

    fn map(&mut self, line: usize, depth: usize) -> Result<Edn, EdnError> {
        let items = self.seq('}', depth)?;
        if items.len() % 2 != 0 {
            return Err(EdnError {
                line,
                message: "a map needs an even number of forms (a key without its value)".into(),
            });
        }
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if pairs.iter().any(|(existing, _): &(Node, Node)| existing.value == k.value) {
                return Err(EdnError { line: k.line, message: format!("duplicate key {}", show(&k.value)) });
            }
            pairs.push((k, v));
        }
        Ok(Edn::Map(pairs))
    }

    fn string(&mut self) -> Result<String, EdnError> {
        let start = self.line;
        let mut s = String::new();
        loop {
            match self.bump() {
                None => return Err(EdnError { line: start, message: "unterminated string".into() }),
                Some('"') => return Ok(s),
                Some('\\') => s.push(match self.bump() {
                    Some('t') => '\t',
                    Some('r') => '\r',
                    Some('n') => '\n',
                    Some('b') => '\u{8}',
                    Some('f') => '\u{c}',
                    Some('\\') => '\\',
                    Some('"') => '"',
                    Some('u') => self.unicode()?,
                    Some(c) => return self.err(format!("unknown escape \\{c} in a string")),
                    None => return Err(EdnError { line: start, message: "unterminated string".into() }),
                }),
                Some(c) => s.push(c),
            }
        }
    }

    fn unicode(&mut self) -> Result<char, EdnError> {
        let mut hex = String::new();
        for _ in 0..4 {
            match self.bump() {
                Some(c) if c.is_ascii_hexdigit() => hex.push(c),
                _ => return self.err("\\u needs four hex digits"),
            }
        }
        let code = u32::from_str_radix(&hex, 16).expect("four hex digits");
        char::from_u32(code).map_or_else(|| self.err(format!("\\u{hex} is not a character")), Ok)
    }

    fn token(&mut self) -> String {
        let mut t = String::new();
        while let Some(&c) = self.chars.peek() {
            if is_delimiter(c) {
                break;
            }
            t.push(c);
            self.bump();
        }
        t
    }

    fn character(&mut self) -> Result<char, EdnError> {
        let Some(first) = self.bump() else { return self.err("a character literal needs a character") };
        if first == 'u' && self.chars.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
            return self.unicode();
        }
        let mut name = String::from(first);
        name.push_str(&self.token());
        Ok(match name.as_str() {
            "newline" => '\n',
            "return" => '\r',
            "space" => ' ',
            "tab" => '\t',
            n if n.chars().count() == 1 => first,
            n => return self.err(format!("unknown character \\{n}")),
        })
    }

    fn atom(&mut self) -> Result<Edn, EdnError> {
        let t = self.token();
        if t.is_empty() {
            let c = self.chars.peek().copied().unwrap_or(' ');
            return self.err(format!("unexpected {c:?}"));
        }
        Ok(match t.as_str() {
            "nil" => Edn::Nil,
            "true" => Edn::Bool(true),
            "false" => Edn::Bool(false),
            _ if t.starts_with(':') => {
                if t.len() == 1 || t.starts_with("::") {
                    return self.err(format!("{t} is not a keyword"));
                }
                Edn::Keyword(t[1..].to_string())
            }
            _ if number_like(&t) => return self.number(&t),
            _ => Edn::Symbol(t),
        })
    }

    fn number(&self, t: &str) -> Result<Edn, EdnError> {
        let bad = || Err(EdnError { line: self.line, message: format!("{t} is not a number") });
        if let Some(int) = t.strip_suffix('N').or(Some(t)).filter(|s| !s.contains(['.', 'e', 'E', 'M'])) {
            return match int.parse::<i64>() {
                Ok(n) => Ok(Edn::Int(n)),
                Err(_) if int.trim_start_matches(['+', '-']).chars().all(|c| c.is_ascii_digit()) => {
                    Err(EdnError { line: self.line, message: format!("{t} is out of range") })
                }
                Err(_) => bad(),
            };
        }
        match t.strip_suffix('M').unwrap_or(t).parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Edn::Float(f)),
            _ => bad(),
        }
    }
}

fn number_like(t: &str) -> bool {
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    digits.starts_with(|c: char| c.is_ascii_digit())
}

/// A short rendering of a value for messages.
pub fn show(v: &Edn) -> String {
    match v {
        Edn::Nil => "nil".into(),
        Edn::Bool(b) => b.to_string(),
        Edn::Str(s) => format!("{s:?}"),
        Edn::Char(c) => format!("\\{c}"),
        Edn::Int(n) => n.to_string(),
        Edn::Float(f) => f.to_string(),
        Edn::Keyword(k) => format!(":{k}"),
        Edn::Symbol(s) => s.clone(),
        Edn::List(_) => "a list".into(),
        Edn::Vector(_) => "a vector".into(),
        Edn::Map(_) => "a map".into(),
        Edn::Set(_) => "a set".into(),
        Edn::Tagged(t, _) => format!("#{t}"),
    }
}

/// Parses a document holding exactly one value.
pub fn parse(text: &str) -> Result<Node, EdnError> {
    let mut r = Reader { chars: text.chars().peekable(), line: 1 };
    let Some(node) = r.form(0)? else {
        r.skip();
        return match r.chars.peek().copied() {
            Some(c) => r.err(format!("unexpected {c:?}")),
            None => r.err("the file holds no value"),
        };
    };
    r.skip();
    if let Some(c) = r.chars.peek().copied() {
        return r.err(format!("more after the first value (starting with {c:?})"));
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Edn {
        parse(text).unwrap().value
    }

    #[test]
    fn reads_the_seed_layout_with_lines() {
        let text = "; daemons\n{:apps [{:name \"indexer\"\n         :args [\"start\" \"--port\" \"9000\"],\n  :env {:NODE_ENV \"production\"} :autorestart true :restart_delay 5000 :x nil}]}\n";
        let Edn::Map(top) = v(text) else { panic!() };
        assert_eq!(top[0].0.value, Edn::Keyword("apps".into()));
        assert_eq!(top[0].0.line, 2);
        let Edn::Vector(apps) = &top[0].1.value else { panic!() };
        let Edn::Map(app) = &apps[0].value else { panic!() };
        let lines: Vec<(String, usize)> = app.iter().map(|(k, _)| (show(&k.value), k.line)).collect();
        assert_eq!(lines[0], (":name".to_string(), 2));
        assert_eq!(lines[1], (":args".to_string(), 3));
        assert_eq!(lines[2], (":env".to_string(), 4));
        assert_eq!(app[4].1.value, Edn::Int(5000));
        assert_eq!(app[5].1.value, Edn::Nil);
    }

    #[test]
    fn every_kind_of_value() {
        assert_eq!(v(r#""a\"b\n\u00e9""#), Edn::Str("a\"b\né".into()));
        assert_eq!(v(r"\newline"), Edn::Char('\n'));
        assert_eq!(v(r"\x"), Edn::Char('x'));
        assert_eq!(v("-42"), Edn::Int(-42));
        assert_eq!(v("42N"), Edn::Int(42));
        assert_eq!(v("1.5e3"), Edn::Float(1500.0));
        assert_eq!(v("2.5M"), Edn::Float(2.5));
        assert_eq!(v(":ns/key"), Edn::Keyword("ns/key".into()));
        assert_eq!(v("my.sym/x"), Edn::Symbol("my.sym/x".into()));
        assert_eq!(
            v("#{1 2}"),
            Edn::Set(vec![Node { value: Edn::Int(1), line: 1 }, Node { value: Edn::Int(2), line: 1 }])
        );
        assert!(matches!(v("#inst \"2020-01-01\""), Edn::Tagged(t, _) if t == "inst"));
        assert_eq!(v("[1 #_ 2 3]"), v("[1, 3]"));
        assert_eq!(
            v("(a b)"),
            Edn::List(vec![
                Node { value: Edn::Symbol("a".into()), line: 1 },
                Node { value: Edn::Symbol("b".into()), line: 1 }
            ])
        );
    }

    #[test]
    fn errors_name_their_line() {
        let e = |t: &str| parse(t).unwrap_err();
        assert_eq!(e("{:a 1\n :b}").line, 1);
        assert!(e("{:a 1\n :b}").message.contains("even number"));
        assert_eq!(e("[1 2\n 3").message, "unclosed collection: missing ']'");
        assert_eq!(e("\n\n\"abc").line, 3);
        assert_eq!(e("{:a 1\n:a 2}").line, 2);
        assert!(e("{:a 1} {:b 2}").message.starts_with("more after"));
        assert_eq!(e("").message, "the file holds no value");
        assert!(e("99999999999999999999").message.contains("out of range"));
        assert!(e(&"[".repeat(500)).message.contains("nested deeper"));
        assert!(e("]").message.contains("unexpected"));
        assert!(e("1.2.3").message.contains("not a number"));
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(10_000))]

            /// Any text: a value or an error with a line inside the text, never a panic.
            #[test]
            fn any_text_parses_or_fails_with_a_line(text in "\\PC{0,200}") {
                if let Err(e) = parse(&text) {
                    prop_assert!(e.line >= 1 && e.line <= text.matches('\n').count() + 1, "{e} in {text:?}");
                }
            }

            /// EDN-shaped text (the characters that matter, in any order).
            #[test]
            fn edn_shaped_text_never_panics(text in "[{}\\[\\]()#_:\"\\\\ ,;\na-z0-9.+-eNMu]{0,120}") {
                let _ = parse(&text);
            }
        }
    }
}
