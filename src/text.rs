//! Text that reaches an operator's terminal: the Rust side of the one text rule of
//! `sql/retrylog_text.sql`. Values are validated once, in record_retry; what the binary
//! prints for people (its tables, its own errors, the server's, clap's) goes through
//! [`escape`] so no control character, bidirectional override or zero-width character
//! reaches the terminal raw — also from a `detail`, which the rule does not cover.

/// Whether the text rule refuses this character: C0 and C1 controls, DEL, the line and
/// paragraph separators, every bidirectional mark, embedding, override and isolate, and the
/// zero-width characters (which print as nothing, so two different values would read the
/// same). `retrylog_refused_characters()` in `sql/retrylog_text.sql` lists the same ones.
pub fn is_refused(character: char) -> bool {
    character.is_control()
        || matches!(
            character,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2060}'
                | '\u{2066}'..='\u{2069}'
                | '\u{feff}'
        )
}

/// `text` with every refused character written `\u{XXXX}`, cut after `max_chars` characters
/// with its length said.
pub fn escape(text: &str, max_chars: usize) -> String {
    let mut shown = String::new();
    for character in text.chars().take(max_chars) {
        if is_refused(character) {
            shown.push_str(&format!("\\u{{{:04x}}}", character as u32));
        } else {
            shown.push(character);
        }
    }
    let length = text.chars().count();
    if length > max_chars {
        shown.push_str(&format!("... ({length} characters)"));
    }
    shown
}

/// A line for the terminal: refused characters escaped, bounded to 2,000 characters.
pub fn for_terminal(line: &str) -> String {
    escape(line, 2000)
}

/// A cell of a table printed for people: refused characters escaped, nothing cut (the table
/// fits itself to a terminal, and a pipe gets every value whole).
pub fn for_table(cell: &str) -> String {
    escape(cell, usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_writes_controls_and_bidi_overrides_as_code_points() {
        assert_eq!(
            escape("a\u{1b}[31m\nb\u{202e}c", 100),
            "a\\u{001b}[31m\\u{000a}b\\u{202e}c"
        );
    }

    #[test]
    fn escape_writes_zero_width_characters_as_code_points() {
        assert_eq!(
            escape("fail\u{200b}ed\u{200c}\u{200d}\u{2060}\u{feff}", 100),
            "fail\\u{200b}ed\\u{200c}\\u{200d}\\u{2060}\\u{feff}"
        );
        // Accented, wide and emoji characters stay as they are.
        assert_eq!(escape("é界😀", 100), "é界😀");
    }

    #[test]
    fn escape_bounds_a_long_value_and_says_its_length() {
        let long = "x".repeat(100_000);
        let shown = escape(&long, 40);
        assert_eq!(shown, format!("{}... (100000 characters)", "x".repeat(40)));
    }
}
