//! The parser of a distribution's textual form (see the [module documentation](super)).

use super::distribution::Distribution;
use super::error::SpaceError;
use super::value::Choice;

impl Distribution {
    /// Parses the textual form (see the [module documentation](super)).
    ///
    /// # Errors
    /// [`SpaceError::Syntax`] saying where the text stops making sense, or
    /// [`SpaceError::Invalid`] when it parses but the distribution is invalid.
    pub fn parse(text: &str) -> Result<Self, SpaceError> {
        Parser::new(text).distribution()
    }
}

/// A token's value in the textual form.
#[derive(Debug, Clone, PartialEq)]
enum Atom {
    Int(i64),
    Float(f64),
    Word(String),
    Quoted(String),
}

impl Atom {
    fn into_choice(self) -> Choice {
        match self {
            Self::Int(i) => Choice::Int(i),
            Self::Float(x) => Choice::Float(x),
            Self::Word(w) if w == "true" => Choice::Bool(true),
            Self::Word(w) if w == "false" => Choice::Bool(false),
            Self::Word(w) | Self::Quoted(w) => Choice::Str(w),
        }
    }
}

/// One argument: positional or `key=value`, with the column it starts at.
struct Arg {
    key: Option<String>,
    value: Atom,
    column: usize,
}

/// Recursive-descent parser over the characters of one distribution's text.
pub(super) struct Parser<'a> {
    text: &'a str,
    chars: Vec<char>,
    pos: usize,
}

impl<'a> Parser<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Self {
            text,
            chars: text.chars().collect(),
            pos: 0,
        }
    }

    fn err_at(&self, pos: usize, message: impl Into<String>) -> SpaceError {
        SpaceError::Syntax {
            text: self.text.to_string(),
            column: pos + 1,
            message: message.into(),
        }
    }

    fn skip_ws(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn found(&self) -> String {
        match self.peek() {
            Some(c) => format!("`{c}`"),
            None => "the end of the text".to_string(),
        }
    }

    fn expect(&mut self, c: char) -> Result<(), SpaceError> {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err_at(self.pos, format!("expected `{c}`, found {}", self.found())))
        }
    }

    fn word(&mut self) -> String {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    fn atom(&mut self) -> Result<Atom, SpaceError> {
        self.skip_ws();
        let start = self.pos;
        match self.peek() {
            Some(q @ ('"' | '\'')) => {
                self.pos += 1;
                let mut s = String::new();
                loop {
                    match self.peek() {
                        None => return Err(self.err_at(start, "unterminated quoted string")),
                        Some('\\') => {
                            self.pos += 1;
                            let Some(c) = self.peek() else {
                                return Err(self.err_at(start, "unterminated quoted string"));
                            };
                            s.push(c);
                            self.pos += 1;
                        }
                        Some(c) if c == q => {
                            self.pos += 1;
                            return Ok(Atom::Quoted(s));
                        }
                        Some(c) => {
                            s.push(c);
                            self.pos += 1;
                        }
                    }
                }
            }
            Some(c) if c.is_ascii_digit() || matches!(c, '-' | '+' | '.') => {
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.' | '_'))
                {
                    // A sign is only part of the number at the start or after an exponent.
                    if matches!(self.peek(), Some('-' | '+'))
                        && self.pos > start
                        && !matches!(self.chars[self.pos - 1], 'e' | 'E')
                    {
                        break;
                    }
                    self.pos += 1;
                }
                let lexeme: String = self.chars[start..self.pos].iter().collect();
                let clean = lexeme.replace('_', "");
                if let Ok(i) = clean.parse::<i64>() {
                    return Ok(Atom::Int(i));
                }
                match clean.parse::<f64>() {
                    Ok(x) if x.is_finite() => Ok(Atom::Float(x)),
                    _ => Err(self.err_at(start, format!("`{lexeme}` is not a number"))),
                }
            }
            Some(c) if c.is_alphabetic() || c == '_' => Ok(Atom::Word(self.word())),
            _ => Err(self.err_at(start, format!("expected a value, found {}", self.found()))),
        }
    }

    fn arg(&mut self) -> Result<Arg, SpaceError> {
        self.skip_ws();
        let column = self.pos;
        let first = self.atom()?;
        self.skip_ws();
        if self.peek() == Some('=') {
            let Atom::Word(key) = first else {
                return Err(self.err_at(column, "only a name can come before `=`"));
            };
            self.pos += 1;
            let value_column = {
                self.skip_ws();
                self.pos
            };
            let value = self.atom()?;
            return Ok(Arg {
                key: Some(key),
                value,
                column: value_column,
            });
        }
        Ok(Arg {
            key: None,
            value: first,
            column,
        })
    }

    pub(super) fn distribution(&mut self) -> Result<Distribution, SpaceError> {
        self.skip_ws();
        let name_at = self.pos;
        if !self.peek().is_some_and(char::is_alphabetic) {
            return Err(self.err_at(
                name_at,
                format!(
                    "expected a distribution (uniform, loguniform, int, intlog, choice), found {}",
                    self.found()
                ),
            ));
        }
        let name = self.word();
        self.expect('(')?;
        let mut args = Vec::new();
        self.skip_ws();
        if self.peek() == Some(')') {
            self.pos += 1;
        } else {
            loop {
                args.push(self.arg()?);
                self.skip_ws();
                match self.peek() {
                    Some(',') => self.pos += 1,
                    Some(')') => {
                        self.pos += 1;
                        break;
                    }
                    _ => {
                        return Err(self.err_at(self.pos, format!("expected `,` or `)`, found {}", self.found())));
                    }
                }
            }
        }
        self.skip_ws();
        if self.pos < self.chars.len() {
            return Err(self.err_at(self.pos, format!("unexpected {} after the closing `)`", self.found())));
        }
        self.build(&name, name_at, args)
    }

    fn number(&self, arg: &Arg, what: &str) -> Result<f64, SpaceError> {
        match arg.value {
            Atom::Int(i) => Ok(i as f64),
            Atom::Float(x) => Ok(x),
            _ => Err(self.err_at(arg.column, format!("{what} must be a number"))),
        }
    }

    fn integer(&self, arg: &Arg, what: &str) -> Result<i64, SpaceError> {
        match arg.value {
            Atom::Int(i) => Ok(i),
            _ => Err(self.err_at(arg.column, format!("{what} must be an integer"))),
        }
    }

    fn build(&self, name: &str, name_at: usize, args: Vec<Arg>) -> Result<Distribution, SpaceError> {
        if name == "choice" || name == "categorical" {
            if let Some(a) = args.iter().find(|a| a.key.is_some()) {
                return Err(self.err_at(a.column, "choice takes values only, no `key=value`"));
            }
            if args.is_empty() {
                return Err(self.err_at(name_at, "choice needs at least one value"));
            }
            return Distribution::categorical(args.into_iter().map(|a| a.value.into_choice()).collect());
        }
        let (log_default, integer) = match name {
            "uniform" | "float" => (false, false),
            "loguniform" => (true, false),
            "int" => (false, true),
            "intlog" | "logint" => (true, true),
            other => {
                return Err(self.err_at(
                    name_at,
                    format!("unknown distribution `{other}` (expected uniform, loguniform, int, intlog or choice)"),
                ));
            }
        };
        let (positional, named): (Vec<&Arg>, Vec<&Arg>) = args.iter().partition(|a| a.key.is_none());
        if positional.len() != 2 {
            let at = positional
                .get(2)
                .map_or(self.chars.len().saturating_sub(1), |a| a.column);
            return Err(self.err_at(
                at,
                format!("{name} takes two bounds (low, high), got {}", positional.len()),
            ));
        }
        let mut step = None;
        let mut log = log_default;
        for a in named {
            match a.key.as_deref() {
                Some("step") => step = Some(a),
                Some("log") => {
                    log = match &a.value {
                        Atom::Word(w) if w == "true" => true,
                        Atom::Word(w) if w == "false" => false,
                        _ => return Err(self.err_at(a.column, "log must be true or false")),
                    }
                }
                Some(other) => {
                    return Err(self.err_at(a.column, format!("unknown option `{other}` (expected step or log)")));
                }
                None => {}
            }
        }
        if integer {
            let low = self.integer(positional[0], "low")?;
            let high = self.integer(positional[1], "high")?;
            let step = step.map(|a| self.integer(a, "step")).transpose()?.unwrap_or(1);
            Distribution::int(low, high, log, step)
        } else {
            let low = self.number(positional[0], "low")?;
            let high = self.number(positional[1], "high")?;
            let step = step.map(|a| self.number(a, "step")).transpose()?;
            Distribution::float(low, high, log, step)
        }
    }
}
