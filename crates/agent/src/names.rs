//! The names agents and tasks are described by: capabilities, permissions and tools. One pattern
//! for all three, and a stable one, because names are stored in events and matched exactly by
//! routing: dotted snake_case, segments of `[a-z][a-z0-9_]*` joined by `.`, at most 64 bytes
//! (`code_review`, `documents.read`, `llm.chat`). Like graph's type names, a name that does not
//! match is refused rather than normalized, so `Code-Review` never silently becomes another
//! capability than the one a task asks for.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub const NAME_MAX: usize = 64;

/// How the pattern reads in errors and in the proto's comments.
pub const PATTERN: &str = "dotted snake_case ([a-z][a-z0-9_]* segments joined by '.', at most 64 bytes)";

/// A capability, permission or tool name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

/// A set of names, ordered so that events and projections list them the same way every time.
pub type Names = BTreeSet<Name>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {PATTERN}, got {0:?}")]
pub struct BadName(String);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_name(s: &str) -> bool {
    s.len() <= NAME_MAX
        && s.split('.').all(|segment| {
            let mut bytes = segment.bytes();
            matches!(bytes.next(), Some(b'a'..=b'z')) && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
        })
}

impl TryFrom<String> for Name {
    type Error = BadName;

    fn try_from(s: String) -> Result<Self, BadName> {
        if is_name(&s) {
            Ok(Name(s))
        } else {
            // Echoed in errors: bounded, so a megabyte of garbage stays out of replies and logs.
            Err(BadName(s.chars().take(80).collect()))
        }
    }
}

impl FromStr for Name {
    type Err = BadName;

    fn from_str(s: &str) -> Result<Self, BadName> {
        Name::try_from(s.to_owned())
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a request's list into a set (duplicates merge: it is a set). The first bad name is
/// reported with its index, as `field[i]`, which is what a client's form shows next to the input.
pub fn parse_names(field: &str, raw: &[String]) -> Result<Names, (String, BadName)> {
    raw.iter().enumerate().map(|(i, s)| s.parse().map_err(|e| (format!("{field}[{i}]"), e))).collect()
}

/// The names as plain strings (for projections and replies).
pub fn strings(names: &Names) -> Vec<String> {
    names.iter().map(|n| n.0.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_is_dotted_snake_case() {
        for good in ["code_review", "documents.read", "llm.chat.v2", "a", &"a".repeat(64)] {
            assert_eq!(good.parse::<Name>().unwrap().as_str(), good);
        }
        for bad in
            ["", "Code", "code-review", "code review", ".a", "a.", "a..b", "1a", "a._b", "é", "a\0", &"a".repeat(65)]
        {
            let err = bad.parse::<Name>().unwrap_err();
            assert!(err.to_string().starts_with("expected dotted snake_case"), "{bad:?}: {err}");
        }
        // Stored names are checked again when read back.
        assert!(serde_json::from_str::<Name>("\"Bad\"").is_err());
    }

    #[test]
    fn a_list_becomes_a_set_and_a_bad_entry_is_named_by_index() {
        let raw = ["b".to_owned(), "a".to_owned(), "b".to_owned()];
        assert_eq!(strings(&parse_names("capabilities", &raw).unwrap()), ["a", "b"]);
        let raw = ["ok".to_owned(), "Not Ok".to_owned()];
        let (field, _) = parse_names("capabilities", &raw).unwrap_err();
        assert_eq!(field, "capabilities[1]");
    }
}
