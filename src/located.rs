//! Naming where an input is wrong: the line of a byte offset, a TOML error's line and message, and the field a deserializer's message names.

/// The 1-based line of a byte offset in a source text.
pub fn line_of(src: &str, offset: usize) -> usize {
    src.get(..offset.min(src.len()))
        .map(|s| s.matches('\n').count() + 1)
        .unwrap_or(1)
}

/// A TOML syntax or schema error: its line, and its message.
pub fn toml_error(src: &str, error: &toml::de::Error) -> (usize, String) {
    let line = error.span().map(|s| line_of(src, s.start)).unwrap_or(1);
    (line, error.message().trim().to_string())
}

/// The field a deserializer's message is about (`unknown field `x``, `missing field `x``,
/// `duplicate key `x``), or `-` when it names none: a syntax error's quoted token (`expected
/// `]``) is not a field.
pub fn field_of(reason: &str) -> String {
    const ABOUT_A_FIELD: [&str; 4] = [
        "unknown field `",
        "missing field `",
        "duplicate field `",
        "duplicate key `",
    ];
    ABOUT_A_FIELD
        .iter()
        .find_map(|p| {
            let rest = &reason[reason.find(p)? + p.len()..];
            rest.split('`').next().map(str::to_string)
        })
        .unwrap_or_else(|| "-".into())
}

/// The field a TOML error is about: the one its message names, else the key written on its
/// line (`mode = "enforce` unclosed: `mode`), else `-` (a table header, say: the line says
/// where).
pub fn field_at(src: &str, line: usize, reason: &str) -> String {
    let named = field_of(reason);
    if named != "-" {
        return named;
    }
    src.lines()
        .nth(line.saturating_sub(1))
        .and_then(|l| l.split_once('='))
        .map(|(key, _)| key.trim())
        .filter(|k| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        })
        .map_or_else(|| "-".to_string(), str::to_string)
}

/// `field `x`: ` before a reason, or nothing when no field is known (`-`).
pub fn about(field: &str) -> String {
    if field == "-" || field.is_empty() {
        String::new()
    } else {
        format!("field `{field}`: ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syntax_error_names_the_key_of_its_line_or_nothing() {
        let src = "[[policy]]\nid = \"x\"\nmode = \"enforce\n";
        assert_eq!(
            field_at(src, 3, "invalid basic string, expected `\"`"),
            "mode"
        );
        assert_eq!(field_at(src, 1, "unclosed array table, expected `]`"), "-");
        assert_eq!(field_at(src, 2, "unknown field `colour`"), "colour");
        assert_eq!(about("-"), "");
        assert_eq!(about("mode"), "field `mode`: ");
    }

    #[test]
    fn only_messages_about_a_field_name_one() {
        assert_eq!(
            field_of("unknown field `intervall`, expected one of `interval`"),
            "intervall"
        );
        assert_eq!(field_of("missing field `id`"), "id");
        assert_eq!(field_of("invalid table header\nexpected `]`"), "-");
        assert_eq!(field_of("invalid string\nexpected `\"`"), "-");
        assert_eq!(line_of("a\nb\nc", 2), 2);
    }
}
