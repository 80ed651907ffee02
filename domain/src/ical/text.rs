//! RFC 5545 content lines: folding and escaping for what we write,
//! unfolding and splitting for what we read (§3.1, §3.3.11).

/// Lines are folded so that none is longer than this many octets, CRLF
/// excluded (RFC 5545 §3.1).
pub const MAX_LINE_OCTETS: usize = 75;

/// Appends one content line, folded at 75 octets (never inside a UTF-8
/// character) and ended with CRLF.
pub fn push_line(out: &mut String, line: &str) {
    let mut rest = line;
    let mut limit = MAX_LINE_OCTETS;
    loop {
        if rest.len() <= limit {
            out.push_str(rest);
            out.push_str("\r\n");
            return;
        }
        let mut cut = limit;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push_str(&rest[..cut]);
        out.push_str("\r\n ");
        rest = &rest[cut..];
        // A continuation line starts with the space, which counts.
        limit = MAX_LINE_OCTETS - 1;
    }
}

/// Escapes a TEXT value (§3.3.11).
pub fn escape_text(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ',' => out.push_str("\\,"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// Undoes [`escape_text`] (and accepts `\N` for a newline).
pub fn unescape_text(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n' | 'N') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// Joins folded lines back (a line break followed by a space or a tab
/// continues the previous line) and splits the text into logical lines.
/// Accepts CRLF and bare LF, as real feeds send both.
pub fn unfold(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for raw in text.split('\n') {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        match raw.as_bytes().first() {
            Some(b' ' | b'\t') if !lines.is_empty() => {
                if let Some(last) = lines.last_mut() {
                    last.push_str(&raw[1..]);
                }
            }
            _ if raw.is_empty() => {}
            _ => lines.push(raw.to_owned()),
        }
    }
    lines
}

/// One content line: `NAME;PARAM=VALUE;...:value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentLine {
    /// Upper-cased.
    pub name: String,
    /// Names upper-cased, values without their quotes.
    pub params: Vec<(String, String)>,
    pub value: String,
}

impl ContentLine {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits a logical line at its first colon outside a quoted parameter
/// value; `None` when it has no colon.
pub fn parse_line(line: &str) -> Option<ContentLine> {
    let mut quoted = false;
    let mut colon = None;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ':' if !quoted => {
                colon = Some(i);
                break;
            }
            _ => {}
        }
    }
    let colon = colon?;
    let (head, value) = (&line[..colon], &line[colon + 1..]);
    let mut parts = split_unquoted(head, ';').into_iter();
    let name = parts.next()?.trim().to_ascii_uppercase();
    let params = parts
        .filter_map(|p| {
            let (n, v) = p.split_once('=')?;
            Some((
                n.trim().to_ascii_uppercase(),
                v.trim().trim_matches('"').to_owned(),
            ))
        })
        .collect();
    Some(ContentLine {
        name,
        params,
        value: value.to_owned(),
    })
}

fn split_unquoted(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == separator && !quoted {
            parts.push(&text[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&text[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_fold_at_75_octets_without_splitting_characters() {
        let line = format!("SUMMARY:{}", "é".repeat(100));
        let mut out = String::new();
        push_line(&mut out, &line);
        for physical in out.split_terminator("\r\n") {
            assert!(physical.len() <= MAX_LINE_OCTETS, "{physical:?}");
        }
        assert_eq!(unfold(&out), vec![line]);
    }

    #[test]
    fn a_short_line_is_left_whole() {
        let mut out = String::new();
        push_line(&mut out, "VERSION:2.0");
        assert_eq!(out, "VERSION:2.0\r\n");
    }

    #[test]
    fn text_escaping_round_trips() {
        let text = "a, b; c\\d\nnext";
        assert_eq!(unescape_text(&escape_text(text)), text);
    }

    #[test]
    fn unfold_accepts_bare_lf_and_tabs() {
        let lines = unfold("UID:abc\n def\n\tghi\nEND:VEVENT\n");
        assert_eq!(lines, vec!["UID:abcdefghi", "END:VEVENT"]);
    }

    #[test]
    fn a_colon_inside_a_quoted_parameter_does_not_split() {
        let line = parse_line("DTSTART;TZID=\"Europe/Lisbon:x\";VALUE=DATE-TIME:20270701T150000")
            .expect("a content line");
        assert_eq!(line.name, "DTSTART");
        assert_eq!(line.param("TZID"), Some("Europe/Lisbon:x"));
        assert_eq!(line.value, "20270701T150000");
    }
}
