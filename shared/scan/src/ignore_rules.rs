//! Which paths the host leaves out: `.gitignore` and `.hotsyncignore` files at any level,
//! `.dockerignore` at the root, patterns from the command line or project file, and always
//! `.git/`. A path the host ignores is never touched on the agent side either.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hotsync_core::RelPath;
use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// Per-directory ignore files, read at every level.
pub const NESTED_IGNORE_FILES: [&str; 2] = [".gitignore", ".hotsyncignore"];
/// Root-only ignore file, with Docker's root-anchored patterns.
pub const DOCKER_IGNORE_FILE: &str = ".dockerignore";

/// The ignore rules of one tree.
#[derive(Clone)]
pub struct IgnoreRules {
    root: PathBuf,
    enabled: bool,
    /// Patterns given by the user and from `.dockerignore`, anchored at the root.
    extra: Gitignore,
    /// Rules of the ignore files found so far, by the directory holding them ("" = root).
    per_dir: BTreeMap<String, Gitignore>,
    /// Problems met reading ignore files, for the user to see once.
    pub warnings: Vec<String>,
    /// The user's own patterns, kept so the rules can be rebuilt when an ignore file changes.
    pub user_patterns: Vec<String>,
    /// Bumped whenever the rules change, so holders of a copy know to refresh it.
    pub generation: u64,
}

impl IgnoreRules {
    /// Rules for the tree at `root` with the user's extra `patterns` (gitignore syntax). Reads
    /// the root's `.dockerignore`; nested files are read as the scanner meets directories.
    pub fn new(root: &Path, patterns: &[String]) -> Self {
        let mut warnings = Vec::new();
        let mut b = GitignoreBuilder::new(root);
        for p in patterns {
            if let Err(e) = b.add_line(None, p) {
                warnings.push(format!("ignore pattern {p:?}: {e}"));
            }
        }
        if let Ok(text) = std::fs::read_to_string(root.join(DOCKER_IGNORE_FILE)) {
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
                // Docker anchors every pattern at the build context's root.
                let (neg, pat) = line.strip_prefix('!').map_or(("", line), |rest| ("!", rest));
                let anchored = format!("{neg}/{}", pat.trim_start_matches('/'));
                if let Err(e) = b.add_line(Some(root.join(DOCKER_IGNORE_FILE)), &anchored) {
                    warnings.push(format!("{DOCKER_IGNORE_FILE}: {line:?}: {e}"));
                }
            }
        }
        let extra = b.build().unwrap_or_else(|e| {
            warnings.push(format!("ignore patterns: {e}"));
            Gitignore::empty()
        });
        let mut rules = Self {
            root: root.to_owned(),
            enabled: true,
            extra,
            per_dir: BTreeMap::new(),
            warnings,
            user_patterns: patterns.to_vec(),
            generation: 0,
        };
        rules.load_dir(None);
        rules
    }

    /// Rules that ignore nothing (the agent indexes all of its root).
    pub fn none(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            enabled: false,
            extra: Gitignore::empty(),
            per_dir: BTreeMap::new(),
            warnings: Vec::new(),
            user_patterns: Vec::new(),
            generation: 0,
        }
    }

    /// Reads the ignore files of directory `dir` (`None` = the root).
    pub fn load_dir(&mut self, dir: Option<&RelPath>) {
        if !self.enabled {
            return;
        }
        let abs_dir = dir.map_or_else(|| self.root.clone(), |d| self.root.join(d.as_str()));
        let mut b = GitignoreBuilder::new(&abs_dir);
        let mut any = false;
        for name in NESTED_IGNORE_FILES {
            let file = abs_dir.join(name);
            if file.is_file() {
                any = true;
                if let Some(e) = b.add(&file) {
                    self.warnings.push(format!("{}: {e}", file.display()));
                }
            }
        }
        let key = dir.map_or(String::new(), |d| d.as_str().to_owned());
        if !any {
            if self.per_dir.remove(&key).is_some() {
                self.generation += 1;
            }
            return;
        }
        match b.build() {
            Ok(gi) => {
                self.per_dir.insert(key, gi);
                self.generation += 1;
            }
            Err(e) => self.warnings.push(format!("{}: {e}", abs_dir.display())),
        }
    }

    /// Is `path` itself ignored (not looking at its parents)? The deepest rule that matches
    /// wins, as in git.
    pub fn is_ignored(&self, path: &RelPath, is_dir: bool) -> bool {
        if path.file_name() == ".git" {
            return true;
        }
        if !self.enabled {
            return false;
        }
        // Asked for every entry of every scan: the absolute path is built only when a rule
        // set is actually consulted (most trees have few ignore files).
        let mut abs = None;
        let mut abs = || abs.get_or_insert_with(|| self.root.join(path.as_str())).clone();
        if !self.per_dir.is_empty() {
            let mut dir = path.parent();
            loop {
                let key = dir.as_ref().map_or("", RelPath::as_str);
                if let Some(gi) = self.per_dir.get(key) {
                    match gi.matched(abs(), is_dir) {
                        Match::Ignore(_) => return true,
                        Match::Whitelist(_) => return false,
                        Match::None => {}
                    }
                }
                match dir {
                    Some(d) => dir = d.parent(),
                    None => break,
                }
            }
        }
        !self.extra.is_empty() && self.extra.matched(abs(), is_dir).is_ignore()
    }

    /// Is `path` or any directory above it ignored?
    pub fn is_excluded(&self, path: &RelPath, is_dir: bool) -> bool {
        let mut prefix: Option<RelPath> = None;
        let depth = path.depth();
        for (i, name) in path.components().enumerate() {
            let Ok(p) = RelPath::child_of(prefix.as_ref(), name) else { return true };
            let last = i + 1 == depth;
            if self.is_ignored(&p, if last { is_dir } else { true }) {
                return true;
            }
            prefix = Some(p);
        }
        false
    }

    /// True when rules were read from ignore files in `dir` (they must be read again, or
    /// dropped, when it is walked again).
    pub fn has_rules_in(&self, dir: &RelPath) -> bool {
        self.per_dir.contains_key(dir.as_str())
    }

    /// True for the files whose change alters the rules themselves.
    pub fn is_rules_file(path: &RelPath) -> bool {
        let name = path.file_name();
        NESTED_IGNORE_FILES.contains(&name) || (path.depth() == 1 && name == DOCKER_IGNORE_FILE)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn nested_rules_negations_and_docker_anchoring() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join(".gitignore"), "*.log\nbuild/\n").unwrap();
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("sub/.gitignore"), "!keep.log\n").unwrap();
        fs::write(root.join(".dockerignore"), "secret\n").unwrap();
        let mut rules = IgnoreRules::new(root, &["*.tmp".to_owned()]);
        rules.load_dir(Some(&p("sub")));

        assert!(rules.is_ignored(&p("a.log"), false));
        assert!(rules.is_ignored(&p("sub/x.log"), false));
        assert!(!rules.is_ignored(&p("sub/keep.log"), false), "the deeper negation wins");
        assert!(rules.is_ignored(&p("build"), true));
        assert!(rules.is_excluded(&p("build/out/x.js"), false), "inside an ignored directory");
        assert!(rules.is_ignored(&p("secret"), false));
        assert!(!rules.is_ignored(&p("sub/secret"), false), ".dockerignore patterns are anchored at the root");
        assert!(rules.is_ignored(&p("z.tmp"), false));
        assert!(rules.is_excluded(&p("sub/.git/config"), false));
        assert!(!rules.is_excluded(&p("src/main.rs"), false));
        assert!(IgnoreRules::none(root).is_excluded(&p(".git/HEAD"), false), ".git is never synced");
    }
}
