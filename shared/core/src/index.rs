//! The tree index: what a sync root holds, as a tree with a Merkle root.
//!
//! Directories are shared copy-on-write (`Arc`), so a snapshot of a 20,000-file tree costs one
//! reference count, and each directory caches its digest until something below it changes. Two
//! trees with the same root hash hold the same entries.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use crate::hash::Hash;
use crate::path::RelPath;

/// What the index knows about a regular file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub size: u64,
    /// The executable bit is the only permission hotsync carries: modes and owners are the
    /// destination's business (its umask, or the uid/gid mapping of an attach).
    pub executable: bool,
    pub hash: Hash,
}

/// One entry, as listed on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    File(FileMeta),
    /// A symbolic link, stored as a link and never followed.
    Symlink {
        target: String,
    },
    Dir,
}

/// A node of the tree.
#[derive(Clone, Debug)]
pub enum Node {
    File(FileMeta),
    Symlink(String),
    Dir(Arc<Dir>),
}

/// A directory's children, with a cached Merkle digest.
#[derive(Clone, Debug, Default)]
pub struct Dir {
    children: BTreeMap<String, Node>,
    digest: OnceLock<Hash>,
}

impl Dir {
    /// The children by name, in byte order.
    pub fn children(&self) -> &BTreeMap<String, Node> {
        &self.children
    }

    fn digest(&self) -> Hash {
        *self.digest.get_or_init(|| {
            let mut h = blake3::Hasher::new();
            h.update(b"d");
            for (name, node) in &self.children {
                h.update(&(name.len() as u64).to_le_bytes());
                h.update(name.as_bytes());
                h.update(&node.digest().0);
            }
            h.finalize().into()
        })
    }

    fn children_mut(&mut self) -> &mut BTreeMap<String, Node> {
        self.digest = OnceLock::new();
        &mut self.children
    }
}

impl Node {
    /// The Merkle digest of this node.
    pub fn digest(&self) -> Hash {
        match self {
            Node::File(m) => {
                // One call over the concatenation (the same digest as feeding a hasher piece
                // by piece): a root hash computes 20,000 of these for a big tree.
                let mut bytes = [0u8; 1 + 1 + 8 + 32];
                bytes[0] = b'f';
                bytes[1] = u8::from(m.executable);
                bytes[2..10].copy_from_slice(&m.size.to_le_bytes());
                bytes[10..].copy_from_slice(&m.hash.0);
                blake3::hash(&bytes).into()
            }
            Node::Symlink(target) => {
                let mut h = blake3::Hasher::new();
                h.update(b"l");
                h.update(target.as_bytes());
                h.finalize().into()
            }
            Node::Dir(d) => d.digest(),
        }
    }

    /// The entry this node stands for (without its children).
    pub fn entry(&self) -> Entry {
        match self {
            Node::File(m) => Entry::File(*m),
            Node::Symlink(t) => Entry::Symlink { target: t.clone() },
            Node::Dir(_) => Entry::Dir,
        }
    }

    fn from_entry(entry: Entry) -> Self {
        match entry {
            Entry::File(m) => Node::File(m),
            Entry::Symlink { target } => Node::Symlink(target),
            Entry::Dir => Node::Dir(Arc::default()),
        }
    }
}

/// A whole tree. Cloning is cheap (copy-on-write).
#[derive(Clone, Debug, Default)]
pub struct TreeIndex {
    root: Arc<Dir>,
}

impl TreeIndex {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// The root directory.
    pub fn root(&self) -> &Dir {
        &self.root
    }

    /// The Merkle root of the whole tree.
    pub fn root_hash(&self) -> Hash {
        self.root.digest()
    }

    /// The node at `path`, if any.
    pub fn get(&self, path: &RelPath) -> Option<&Node> {
        let mut dir: &Dir = &self.root;
        let mut components = path.components().peekable();
        while let Some(name) = components.next() {
            let node = dir.children.get(name)?;
            if components.peek().is_none() {
                return Some(node);
            }
            match node {
                Node::Dir(d) => dir = d,
                _ => return None,
            }
        }
        None
    }

    /// Sets the entry at `path`, creating missing parent directories and replacing a
    /// non-directory that stands where a parent should be. Setting `Entry::Dir` where a
    /// directory already is keeps its children.
    pub fn insert(&mut self, path: &RelPath, entry: Entry) {
        let (dir, name) = self.parent_dir_mut(path);
        let children = dir.children_mut();
        if entry == Entry::Dir && matches!(children.get(name), Some(Node::Dir(_))) {
            return;
        }
        children.insert(name.to_owned(), Node::from_entry(entry));
    }

    /// Puts a whole node (a subtree) at `path`.
    pub fn insert_node(&mut self, path: &RelPath, node: Node) {
        let (dir, name) = self.parent_dir_mut(path);
        dir.children_mut().insert(name.to_owned(), node);
    }

    /// Removes the node at `path` with everything below it.
    pub fn remove(&mut self, path: &RelPath) -> Option<Node> {
        // Walk read-only first so that removing a missing path does not invalidate digests.
        self.get(path)?;
        let (dir, name) = self.parent_dir_mut(path);
        dir.children_mut().remove(name)
    }

    /// Every entry, parents before children, in path order.
    pub fn entries(&self) -> Vec<(RelPath, Entry)> {
        let mut out = Vec::new();
        walk(&self.root, None, &mut |path, node| out.push((path.clone(), node.entry())));
        out
    }

    /// Number of entries (files, links and directories), not counting the root.
    pub fn len(&self) -> usize {
        fn count(dir: &Dir) -> usize {
            dir.children.values().map(|node| 1 + if let Node::Dir(d) = node { count(d) } else { 0 }).sum()
        }
        count(&self.root)
    }

    /// True when the tree has no entry.
    pub fn is_empty(&self) -> bool {
        self.root.children.is_empty()
    }

    /// Builds a tree from a list such as [`TreeIndex::entries`] gives.
    pub fn from_entries(entries: impl IntoIterator<Item = (RelPath, Entry)>) -> Self {
        let mut index = Self::new();
        for (path, entry) in entries {
            index.insert(&path, entry);
        }
        index
    }

    fn parent_dir_mut<'a>(&mut self, path: &'a RelPath) -> (&mut Dir, &'a str) {
        let mut dir = Arc::make_mut(&mut self.root);
        let mut components = path.components().peekable();
        loop {
            let name = components.next().expect("a RelPath has at least one component");
            if components.peek().is_none() {
                return (dir, name);
            }
            let children = dir.children_mut();
            // Look up before inserting: the parent usually exists, and `entry` would allocate
            // the name every time.
            if !matches!(children.get(name), Some(Node::Dir(_))) {
                children.insert(name.to_owned(), Node::Dir(Arc::default()));
            }
            let Some(Node::Dir(child)) = children.get_mut(name) else { unreachable!("just made a directory") };
            dir = Arc::make_mut(child);
        }
    }
}

/// Visits every node below `dir` in pre-order, with its path.
pub fn walk(dir: &Dir, base: Option<&RelPath>, f: &mut dyn FnMut(&RelPath, &Node)) {
    for (name, node) in &dir.children {
        // Names in an index were validated when they entered it.
        let path = RelPath::child_of_valid(base, name);
        f(&path, node);
        if let Node::Dir(d) = node {
            walk(d, Some(&path), f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    fn file(content: &[u8]) -> Entry {
        Entry::File(FileMeta { size: content.len() as u64, executable: false, hash: Hash::of(content) })
    }

    #[test]
    fn equal_trees_have_equal_roots_whatever_the_insert_order() {
        let a = TreeIndex::from_entries([(p("x/y"), file(b"1")), (p("z"), file(b"2"))]);
        let b = TreeIndex::from_entries([(p("z"), file(b"2")), (p("x/y"), file(b"1"))]);
        assert_eq!(a.root_hash(), b.root_hash());
        assert_eq!(a.len(), 3, "x, x/y and z");
    }

    #[test]
    fn any_change_moves_the_root_and_clones_are_independent() {
        let mut a = TreeIndex::from_entries([(p("x/y"), file(b"1"))]);
        let before = a.root_hash();
        let snapshot = a.clone();
        a.insert(&p("x/y"), file(b"2"));
        assert_ne!(a.root_hash(), before);
        assert_eq!(snapshot.root_hash(), before, "a snapshot does not see later edits");
        a.insert(&p("x/y"), file(b"1"));
        assert_eq!(a.root_hash(), before);
        a.insert(&p("x/e"), Entry::Dir);
        assert_ne!(a.root_hash(), before, "an empty directory counts");
        a.remove(&p("x/e"));
        assert_eq!(a.root_hash(), before);
    }

    #[test]
    fn kinds_and_exec_bit_are_part_of_the_hash() {
        let f = TreeIndex::from_entries([(p("a"), file(b""))]);
        let d = TreeIndex::from_entries([(p("a"), Entry::Dir)]);
        let l = TreeIndex::from_entries([(p("a"), Entry::Symlink { target: String::new() })]);
        let x = TreeIndex::from_entries([(
            p("a"),
            Entry::File(FileMeta { size: 0, executable: true, hash: Hash::of(b"") }),
        )]);
        let roots = [f.root_hash(), d.root_hash(), l.root_hash(), x.root_hash()];
        for i in 0..roots.len() {
            for j in i + 1..roots.len() {
                assert_ne!(roots[i], roots[j]);
            }
        }
    }

    #[test]
    fn entries_round_trip_parents_first() {
        let a = TreeIndex::from_entries([(p("b/c/d"), file(b"1")), (p("a"), Entry::Symlink { target: "../x".into() })]);
        let entries = a.entries();
        let names: Vec<_> = entries.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["a", "b", "b/c", "b/c/d"]);
        assert_eq!(TreeIndex::from_entries(entries).root_hash(), a.root_hash());
    }
}
