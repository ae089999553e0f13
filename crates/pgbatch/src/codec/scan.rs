//! A tokenizer just precise enough to find SQL keywords: it skips comments, string
//! literals, quoted identifiers and dollar-quoted bodies the way PostgreSQL does, and yields
//! the bare words with their parenthesis depth.

/// A bare word of SQL text and how deep inside parentheses it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Word<'a> {
    pub(crate) text: &'a str,
    pub(crate) depth: usize,
    /// Where the word ends in the SQL text.
    pub(crate) end: usize,
    /// Whether the word is the first of a statement: the first of the text, or the first
    /// after a `;` outside parentheses.
    pub(crate) starts_statement: bool,
}

impl Word<'_> {
    pub(crate) fn is(&self, keyword: &str) -> bool {
        self.text.eq_ignore_ascii_case(keyword)
    }
}

/// The bare words of `sql`, in order.
pub(crate) struct Words<'a> {
    sql: &'a str,
    at: usize,
    depth: usize,
    /// Whether the next word starts a statement.
    at_statement_start: bool,
}

impl<'a> Words<'a> {
    pub(crate) fn new(sql: &'a str) -> Self {
        Words { sql, at: 0, depth: 0, at_statement_start: true }
    }

    /// Only the words outside parentheses.
    pub(crate) fn top_level(sql: &'a str) -> impl Iterator<Item = Word<'a>> {
        Words::new(sql).filter(|word| word.depth == 0)
    }
}

impl<'a> Iterator for Words<'a> {
    type Item = Word<'a>;

    fn next(&mut self) -> Option<Word<'a>> {
        let (sql, bytes) = (self.sql, self.sql.as_bytes());
        while self.at < bytes.len() {
            let i = self.at;
            match bytes[i] {
                b'-' if bytes.get(i + 1) == Some(&b'-') => self.at = skip_line_comment(bytes, i),
                b'/' if bytes.get(i + 1) == Some(&b'*') => self.at = skip_block_comment(bytes, i),
                b'\'' => self.at = skip_quoted(bytes, i, b'\'', is_escape_string(bytes, i)),
                b'"' => self.at = skip_quoted(bytes, i, b'"', false),
                b'$' => self.at = skip_dollar_quoted(sql, i),
                b'(' => {
                    self.depth += 1;
                    self.at += 1;
                }
                b')' => {
                    self.depth = self.depth.saturating_sub(1);
                    self.at += 1;
                }
                b';' => {
                    self.at_statement_start |= self.depth == 0;
                    self.at += 1;
                }
                b if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 => {
                    let end = bytes[i..]
                        .iter()
                        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'$' || *b >= 0x80))
                        .map_or(bytes.len(), |n| i + n);
                    self.at = end;
                    // `E'..'`, `B'..'`, `X'..'` and `N'..'`: a prefix of the literal that follows.
                    let prefix = end == i + 1 && bytes.get(end) == Some(&b'\'') && b"EeBbXxNn".contains(&b);
                    if !prefix {
                        let starts_statement = std::mem::take(&mut self.at_statement_start);
                        return Some(Word { text: &sql[i..end], depth: self.depth, end, starts_statement });
                    }
                }
                _ => self.at += 1,
            }
        }
        None
    }
}

/// Where the SQL's last token ends: trailing white space and comments left out.
pub(crate) fn code_end(sql: &str) -> usize {
    let bytes = sql.as_bytes();
    let (mut at, mut end) = (0, 0);
    while at < bytes.len() {
        let next = match bytes[at] {
            b'-' if bytes.get(at + 1) == Some(&b'-') => {
                at = skip_line_comment(bytes, at);
                continue;
            }
            b'/' if bytes.get(at + 1) == Some(&b'*') => {
                at = skip_block_comment(bytes, at);
                continue;
            }
            b if b.is_ascii_whitespace() => {
                at += 1;
                continue;
            }
            b'\'' => skip_quoted(bytes, at, b'\'', is_escape_string(bytes, at)),
            b'"' => skip_quoted(bytes, at, b'"', false),
            b'$' => skip_dollar_quoted(sql, at).max(at + 1),
            _ => at + 1,
        };
        at = next;
        end = next;
    }
    end
}

/// PostgreSQL ends a `--` comment at a newline or a carriage return.
fn skip_line_comment(bytes: &[u8], start: usize) -> usize {
    bytes[start..].iter().position(|b| matches!(b, b'\n' | b'\r')).map_or(bytes.len(), |n| start + n + 1)
}

/// `E'...'` strings treat backslash as an escape character.
fn is_escape_string(bytes: &[u8], quote: usize) -> bool {
    quote > 0
        && matches!(bytes[quote - 1], b'E' | b'e')
        && (quote == 1 || !(bytes[quote - 2].is_ascii_alphanumeric() || bytes[quote - 2] == b'_'))
}

fn skip_quoted(bytes: &[u8], start: usize, quote: u8, backslash_escapes: bool) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        if backslash_escapes && bytes[i] == b'\\' {
            i += 2;
        } else if bytes[i] == quote {
            // A doubled quote is an escaped quote, not the end.
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    bytes.len()
}

fn skip_block_comment(bytes: &[u8], start: usize) -> usize {
    // PostgreSQL block comments nest.
    let mut depth = 0usize;
    let mut i = start;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

fn skip_dollar_quoted(sql: &str, start: usize) -> usize {
    let bytes = sql.as_bytes();
    // `$1` is a parameter, `$tag$` or `$$` opens a dollar-quoted string.
    let mut end = start + 1;
    while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
        end += 1;
    }
    if bytes.get(end) != Some(&b'$') || bytes.get(start + 1).is_some_and(u8::is_ascii_digit) {
        return end;
    }
    let tag = &sql[start..=end];
    sql[end + 1..].find(tag).map_or(bytes.len(), |n| end + 1 + n + tag.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(sql: &str) -> Vec<&str> {
        Words::new(sql).map(|w| w.text).collect()
    }

    #[test]
    fn literals_comments_and_quoted_names_are_skipped() {
        assert_eq!(words("SELECT 'a b' /* c /* d */ e */ \"f g\" $x$ h $x$ i"), ["SELECT", "i"]);
        assert_eq!(words("UPDATE t SET a = E'\\' x'"), ["UPDATE", "t", "SET", "a"]);
        assert_eq!(words("-- one\rCOMMIT"), ["COMMIT"], "a carriage return ends a line comment");
        assert_eq!(words("-- one\nSELECT (a) $1"), ["SELECT", "a"]);
    }

    #[test]
    fn the_code_ends_before_trailing_comments() {
        assert_eq!(code_end("SELECT 1 -- c"), "SELECT 1".len());
        assert_eq!(code_end("SELECT 1; /* c */  "), "SELECT 1;".len());
        assert_eq!(code_end("SELECT '--'"), "SELECT '--'".len());
        assert_eq!(code_end("  "), 0);
    }
}
