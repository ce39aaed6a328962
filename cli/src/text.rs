//! Text from outside (the network, a pointer not yet verified, a status file
//! an older agent wrote) on its way to a terminal or a log: control
//! characters escaped, so that no ANSI sequence or fake line reaches the
//! reader, and the length bounded.

use std::fmt::Write as _;
use std::io::{self, Write};

/// Characters kept of one message: room for a long error chain, not for a
/// server's whole error page.
pub const MAX_CHARS: usize = 2000;

/// `s` with control and direction-changing characters escaped (`\n`,
/// `\u{1b}`), cut after `MAX_CHARS` characters.
pub fn clean(s: &str) -> String {
    bounded(s, MAX_CHARS)
}

/// `clean`, cut after `max` characters: for a field in a table, where a
/// whole error chain would not fit.
pub fn bounded(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for (i, c) in s.chars().enumerate() {
        if i == max {
            let rest = s.chars().count() - max;
            let _ = write!(out, "… ({rest} more characters)");
            break;
        }
        push_escaped(&mut out, c);
    }
    out
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        // Bidirectional marks, overrides and isolates reorder what a
        // terminal or a page shows; line and paragraph separators break a
        // line where no newline is.
        c if c.is_control()
            || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
        {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// Characters kept of one log line.
const MAX_LOG_LINE: usize = 4096;

/// Standard error for the text log: each event (tracing writes one per
/// call) escaped and bounded like `clean`, ending in one newline. Colours
/// are off, since escaping every control byte is simpler than telling the
/// formatter's from a server's.
pub struct CleanStderr;

impl Write for CleanStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let body = text.strip_suffix('\n').unwrap_or(&text);
        let mut line = bounded(body, MAX_LOG_LINE);
        line.push('\n');
        io::stderr().lock().write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_bounds_length() {
        assert_eq!(clean("plain: ok/é"), "plain: ok/é");
        assert_eq!(
            clean("a\x1b[31mred\nerror: fake\u{202e}x\u{9b}"),
            "a\\u{1b}[31mred\\nerror: fake\\u{202e}x\\u{9b}"
        );
        let long = "x".repeat(MAX_CHARS + 5);
        let c = clean(&long);
        assert!(c.starts_with(&"x".repeat(MAX_CHARS)));
        assert!(c.ends_with("… (5 more characters)"), "{c}");
        assert_eq!(bounded("ab\x1bcd", 3), "ab\\u{1b}… (2 more characters)");
        assert_eq!(
            clean("a\u{2067}b\u{061c}c\u{2028}d"),
            "a\\u{2067}b\\u{61c}c\\u{2028}d"
        );
    }
}
