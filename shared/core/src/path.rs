//! Relative paths that cannot escape a sync root.
//!
//! Every path that crosses the wire is a [`RelPath`]; it is validated when it is decoded, so
//! the agent never sees `..`, an absolute path, an empty or `.` component, a NUL byte, or the
//! agent's own state directory.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The agent keeps its staging area and index cache here, inside its root. No peer may write it.
pub const AGENT_STATE_DIR: &str = ".hotsync";

/// Longest path accepted, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest component accepted, in bytes (Linux's `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

/// Why a string is not a safe relative path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("path {0:?} is absolute; only paths relative to the sync root are allowed")]
    Absolute(String),
    #[error("path {0:?} has an empty, `.` or `..` component")]
    BadComponent(String),
    #[error("path {0:?} contains a NUL byte or a backslash")]
    BadByte(String),
    #[error("path is longer than {MAX_PATH_LEN} bytes or has a component longer than {MAX_NAME_LEN}")]
    TooLong,
    #[error("path {0:?} is inside the agent's private `{AGENT_STATE_DIR}` directory")]
    Reserved(String),
}

/// A normalised, `/`-separated path relative to a sync root: one or more components, none of
/// them empty, `.` or `..`, no NUL and no backslash (so it means the same on every platform).
///
/// Ordering is component-wise, so a directory sorts right before its contents.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RelPath(String);

impl RelPath {
    /// Validates `s` as a safe relative path.
    pub fn new(s: impl Into<String>) -> Result<Self, PathError> {
        let s = s.into();
        if s.is_empty() {
            return Err(PathError::Empty);
        }
        if s.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        if s.starts_with('/') {
            return Err(PathError::Absolute(s));
        }
        if s.bytes().any(|b| b == 0 || b == b'\\') {
            return Err(PathError::BadByte(s));
        }
        // One pass over the components (scans validate every path of a tree).
        let mut first = true;
        for component in s.split('/') {
            if component.is_empty() || component == "." || component == ".." {
                return Err(PathError::BadComponent(s));
            }
            if component.len() > MAX_NAME_LEN {
                return Err(PathError::TooLong);
            }
            if first && component == AGENT_STATE_DIR {
                return Err(PathError::Reserved(s));
            }
            first = false;
        }
        Ok(Self(s))
    }

    /// `parent/name` where both are known valid: `name` is a component of a path that was
    /// validated (a name held by a [`crate::TreeIndex`]). Skips validation, not safety: the
    /// index only holds names that came in as parts of a `RelPath`.
    pub(crate) fn child_of_valid(parent: Option<&RelPath>, name: &str) -> RelPath {
        debug_assert!(RelPath::child_of(parent, name).is_ok(), "{parent:?} / {name:?} is not a valid path");
        match parent {
            Some(p) => {
                let mut s = String::with_capacity(p.0.len() + 1 + name.len());
                s.push_str(&p.0);
                s.push('/');
                s.push_str(name);
                Self(s)
            }
            None => Self(name.to_owned()),
        }
    }

    /// The path as a `/`-separated string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, outermost first.
    pub fn components(&self) -> impl DoubleEndedIterator<Item = &str> {
        self.0.split('/')
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The parent, or `None` for a top-level entry.
    pub fn parent(&self) -> Option<RelPath> {
        self.0.rfind('/').map(|i| Self(self.0[..i].to_owned()))
    }

    /// `self/name`, validated.
    pub fn join(&self, name: &str) -> Result<RelPath, PathError> {
        Self::new(format!("{}/{name}", self.0))
    }

    /// A top-level path `name`, or `parent/name`.
    pub fn child_of(parent: Option<&RelPath>, name: &str) -> Result<RelPath, PathError> {
        match parent {
            Some(p) => p.join(name),
            None => Self::new(name),
        }
    }

    /// How many components deep the path is (a top-level entry is 1).
    pub fn depth(&self) -> usize {
        self.0.split('/').count()
    }

    /// True when `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.0 == other.0 || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }
}

impl Ord for RelPath {
    /// Component-wise order, computed byte-wise: `/` ranks below every byte a component may
    /// hold (NUL is refused), which is exactly what comparing the components one by one gives,
    /// without splitting.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        let rank = |c: u8| if c == b'/' { 0 } else { u16::from(c) + 1 };
        match a.iter().zip(b).position(|(x, y)| x != y) {
            Some(i) => rank(a[i]).cmp(&rank(b[i])),
            None => a.len().cmp(&b.len()),
        }
    }
}

impl PartialOrd for RelPath {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl TryFrom<String> for RelPath {
    type Error = PathError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<RelPath> for String {
    fn from(p: RelPath) -> String {
        p.0
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        for ok in ["a", "a/b", "src/main.rs", "dir with space/ünïcødé ✓", ".gitignore", "a/.b/..c"] {
            assert_eq!(RelPath::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_every_escape() {
        for bad in [
            "",
            "/etc/passwd",
            "..",
            "../x",
            "a/../../x",
            "a/..",
            "./a",
            "a/./b",
            "a//b",
            "a/",
            "a\0b",
            "a\\..\\b",
            ".hotsync",
            ".hotsync/tmp/x",
        ] {
            assert!(RelPath::new(bad).is_err(), "{bad:?} must be rejected");
        }
        assert!(RelPath::new("x".repeat(256)).is_err());
        assert!(RelPath::new("a/".repeat(2049)).is_err());
    }

    #[test]
    fn decoding_validates() {
        let bytes = postcard::to_allocvec(&"../../etc/passwd".to_owned()).unwrap();
        assert!(postcard::from_bytes::<RelPath>(&bytes).is_err());
    }

    #[test]
    fn orders_by_component_and_knows_its_family() {
        let a = RelPath::new("a").unwrap();
        let ab = RelPath::new("a/b").unwrap();
        let a_b = RelPath::new("a-b").unwrap();
        assert!(a < ab && ab < a_b, "a directory sorts right before its contents");
        assert!(ab.starts_with(&a) && !a_b.starts_with(&a));
        assert_eq!(ab.parent(), Some(a.clone()));
        assert_eq!(ab.file_name(), "b");
        assert_eq!(a.parent(), None);
    }

    proptest::proptest! {
        /// The byte-wise comparison agrees with comparing components one by one.
        #[test]
        fn byte_order_is_component_order(a in "[a/b.-]{1,12}", b in "[a/b.-]{1,12}") {
            if let (Ok(a), Ok(b)) = (RelPath::new(a), RelPath::new(b)) {
                proptest::prop_assert_eq!(a.cmp(&b), a.components().cmp(b.components()));
            }
        }
    }
}
