//! What turns one tree into another: the ordered operations of a changeset, and how they
//! change a tree.
//!
//! The host diffs its tree against its model of the agent's tree; the agent applies the same
//! operations to its disk and to its index with [`apply`], and the host applies them to its
//! model, so both sides agree on the resulting Merkle root without sending a file list.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::index::{Dir, FileMeta, Node, TreeIndex};
use crate::path::RelPath;

/// One step of a changeset. The order in a changeset matters: all deletes come first
/// (deepest first), then directories before what goes inside them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Remove a file or a symlink, or a directory once it is empty. A directory that still
    /// holds something (e.g. paths the host ignores) is left in place: not an error.
    Delete { path: RelPath },
    /// Create a directory (no-op if one is there).
    Mkdir { path: RelPath },
    /// Create or replace a symbolic link.
    Symlink { path: RelPath, target: String },
    /// Create or replace a file; its content travels on a data stream.
    Write { path: RelPath, meta: FileMeta },
    /// Change only the executable bit of a file whose content is unchanged.
    SetExecutable { path: RelPath, executable: bool },
}

impl Op {
    /// The path this operation is about.
    pub fn path(&self) -> &RelPath {
        match self {
            Op::Delete { path }
            | Op::Mkdir { path }
            | Op::Symlink { path, .. }
            | Op::Write { path, .. }
            | Op::SetExecutable { path, .. } => path,
        }
    }
}

/// The operations that make `remote` equal to `local`, leaving alone every remote path for
/// which `keep(path, is_dir)` is true (paths the host ignores or cannot read), with all they
/// hold.
///
/// Subtrees with equal Merkle digests are skipped without being walked, so the cost follows
/// the size of the change, not the size of the tree.
pub fn diff(local: &TreeIndex, remote: &TreeIndex, keep: &dyn Fn(&RelPath, bool) -> bool) -> Vec<Op> {
    let mut out = Diff { deletes: Vec::new(), puts: Vec::new(), keep };
    out.dirs(local.root(), remote.root(), None);
    let mut ops = out.deletes;
    ops.extend(out.puts);
    ops
}

struct Diff<'k> {
    deletes: Vec<Op>,
    puts: Vec<Op>,
    keep: &'k dyn Fn(&RelPath, bool) -> bool,
}

impl Diff<'_> {
    fn dirs(&mut self, local: &Dir, remote: &Dir, base: Option<&RelPath>) {
        let (l, r) = (local.children(), remote.children());
        let names = merged_names(l, r);
        for name in names {
            let Ok(path) = RelPath::child_of(base, name) else { continue };
            match (l.get(name), r.get(name)) {
                (Some(ln), None) => self.create(&path, ln),
                (None, Some(rn)) => {
                    if !(self.keep)(&path, matches!(rn, Node::Dir(_))) {
                        self.delete(&path, rn);
                    }
                }
                (Some(ln), Some(rn)) => self.update(&path, ln, rn),
                (None, None) => {}
            }
        }
    }

    fn update(&mut self, path: &RelPath, local: &Node, remote: &Node) {
        if local.digest() == remote.digest() {
            return;
        }
        match (local, remote) {
            (Node::Dir(l), Node::Dir(r)) => self.dirs(l, r, Some(path)),
            (Node::File(l), Node::File(r)) if l.hash == r.hash && l.size == r.size => {
                self.puts.push(Op::SetExecutable { path: path.clone(), executable: l.executable });
            }
            (Node::File(l), Node::File(_)) => {
                self.puts.push(Op::Write { path: path.clone(), meta: *l });
            }
            (Node::Symlink(target), Node::Symlink(_)) => {
                self.puts.push(Op::Symlink { path: path.clone(), target: target.clone() });
            }
            _ => {
                self.delete(path, remote);
                self.create(path, local);
            }
        }
    }

    fn create(&mut self, path: &RelPath, node: &Node) {
        match node {
            Node::File(meta) => self.puts.push(Op::Write { path: path.clone(), meta: *meta }),
            Node::Symlink(target) => {
                self.puts.push(Op::Symlink { path: path.clone(), target: target.clone() });
            }
            Node::Dir(dir) => {
                self.puts.push(Op::Mkdir { path: path.clone() });
                for (name, child) in dir.children() {
                    if let Ok(child_path) = path.join(name) {
                        self.create(&child_path, child);
                    }
                }
            }
        }
    }

    /// Deletes a subtree deepest first, sparing what `keep` protects.
    fn delete(&mut self, path: &RelPath, node: &Node) {
        if let Node::Dir(dir) = node {
            for (name, child) in dir.children() {
                let Ok(child_path) = path.join(name) else { continue };
                if !(self.keep)(&child_path, matches!(child, Node::Dir(_))) {
                    self.delete(&child_path, child);
                }
            }
        }
        self.deletes.push(Op::Delete { path: path.clone() });
    }
}

fn merged_names<'a>(a: &'a BTreeMap<String, Node>, b: &'a BTreeMap<String, Node>) -> Vec<&'a str> {
    let mut names: Vec<&str> = a.keys().chain(b.keys()).map(String::as_str).collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// Applies `ops` to a tree with the agent's semantics: what the agent's disk becomes when
/// every operation succeeds. The agent keeps its index with this, and the host its model.
pub fn apply(index: &mut TreeIndex, ops: &[Op]) {
    for op in ops {
        apply_one(index, op);
    }
}

/// Applies one operation; see [`apply`].
pub fn apply_one(index: &mut TreeIndex, op: &Op) {
    match op {
        Op::Delete { path } => {
            let non_empty_dir = matches!(index.get(path), Some(Node::Dir(d)) if !d.children().is_empty());
            if !non_empty_dir {
                index.remove(path);
            }
        }
        Op::Mkdir { path } => {
            if !matches!(index.get(path), Some(Node::Dir(_))) {
                index.insert_node(path, Node::Dir(Arc::default()));
            }
        }
        Op::Symlink { path, target } => index.insert_node(path, Node::Symlink(target.clone())),
        Op::Write { path, meta } => index.insert_node(path, Node::File(*meta)),
        Op::SetExecutable { path, executable } => {
            if let Some(Node::File(meta)) = index.get(path) {
                let meta = FileMeta { executable: *executable, ..*meta };
                index.insert_node(path, Node::File(meta));
            }
        }
    }
}

/// Totals of a changeset, for the one line a user reads per changeset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub written: u64,
    pub deleted: u64,
    pub other: u64,
    /// Size of the files written (not what crossed the wire: deltas send less).
    pub bytes: u64,
}

/// Counts what `ops` do.
pub fn summarize(ops: &[Op]) -> Summary {
    let mut s = Summary::default();
    for op in ops {
        match op {
            Op::Write { meta, .. } => {
                s.written += 1;
                s.bytes += meta.size;
            }
            Op::Delete { .. } => s.deleted += 1,
            _ => s.other += 1,
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::hash::Hash;
    use crate::index::Entry;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    fn file(content: &str, executable: bool) -> Entry {
        Entry::File(FileMeta { size: content.len() as u64, executable, hash: Hash::of(content.as_bytes()) })
    }

    fn sync(local: &TreeIndex, remote: &mut TreeIndex) -> Vec<Op> {
        let ops = diff(local, remote, &|_, _| false);
        apply(remote, &ops);
        ops
    }

    #[test]
    fn equal_trees_need_nothing() {
        let t = TreeIndex::from_entries([(p("a/b"), file("x", false))]);
        assert!(diff(&t, &t.clone(), &|_, _| false).is_empty());
    }

    #[test]
    fn only_the_exec_bit_changed_sends_no_content() {
        let local = TreeIndex::from_entries([(p("run.sh"), file("#!", true))]);
        let remote = TreeIndex::from_entries([(p("run.sh"), file("#!", false))]);
        assert_eq!(diff(&local, &remote, &|_, _| false), [Op::SetExecutable { path: p("run.sh"), executable: true }]);
    }

    #[test]
    fn deletes_come_first_deepest_first_and_kept_paths_survive() {
        let local = TreeIndex::from_entries([(p("src/new"), file("n", false))]);
        let mut remote = TreeIndex::from_entries([
            (p("src/old/deep/f"), file("o", false)),
            (p("node_modules/x/index.js"), file("dep", false)),
            (p("gone/f"), file("g", false)),
            (p("gone/node_modules/y"), file("dep", false)),
        ]);
        let keep = |path: &RelPath, _: bool| path.file_name() == "node_modules";
        let ops = diff(&local, &remote, &keep);
        let deletes: Vec<_> =
            ops.iter().take_while(|o| matches!(o, Op::Delete { .. })).map(|o| o.path().as_str()).collect();
        assert_eq!(deletes, ["gone/f", "gone", "src/old/deep/f", "src/old/deep", "src/old"]);
        assert_eq!(ops.last(), Some(&Op::Write { path: p("src/new"), meta: meta_of("n") }));
        apply(&mut remote, &ops);
        assert!(remote.get(&p("node_modules/x/index.js")).is_some());
        assert!(remote.get(&p("gone/node_modules/y")).is_some(), "a non-empty directory stays");
        assert!(remote.get(&p("gone/f")).is_none());
    }

    fn meta_of(s: &str) -> FileMeta {
        let Entry::File(m) = file(s, false) else { unreachable!() };
        m
    }

    #[test]
    fn kind_changes_replace_the_entry() {
        let local = TreeIndex::from_entries([(p("a"), file("now a file", false)), (p("b/c"), file("", false))]);
        let mut remote = TreeIndex::from_entries([(p("a/x"), file("was a dir", false)), (p("b"), file("", false))]);
        sync(&local, &mut remote);
        assert_eq!(remote.root_hash(), local.root_hash());
    }

    /// An edit a user (or `git checkout`) makes to a tree.
    #[derive(Clone, Debug)]
    enum Edit {
        Write(usize, u8, bool),
        Delete(usize),
        Rename(usize, usize),
        Chmod(usize, bool),
        Mkdir(usize),
        Symlink(usize, u8),
    }

    const NAMES: [&str; 12] = ["a", "b", "a/c", "a/d", "b/e", "a/c/f", "g", "é", "a/c/ñ", "b/e/h", "i j", "a/d/k"];

    fn edit() -> impl Strategy<Value = Edit> {
        let n = 0..NAMES.len();
        prop_oneof![
            (n.clone(), any::<u8>(), any::<bool>()).prop_map(|(i, c, x)| Edit::Write(i, c, x)),
            n.clone().prop_map(Edit::Delete),
            (n.clone(), n.clone()).prop_map(|(a, b)| Edit::Rename(a, b)),
            (n.clone(), any::<bool>()).prop_map(|(i, x)| Edit::Chmod(i, x)),
            n.clone().prop_map(Edit::Mkdir),
            (n, any::<u8>()).prop_map(|(i, c)| Edit::Symlink(i, c)),
        ]
    }

    fn perform(tree: &mut TreeIndex, e: &Edit) {
        match e {
            Edit::Write(i, c, x) => tree.insert(&p(NAMES[*i]), file(&c.to_string(), *x)),
            Edit::Delete(i) => {
                tree.remove(&p(NAMES[*i]));
            }
            Edit::Rename(a, b) => {
                let (from, to) = (p(NAMES[*a]), p(NAMES[*b]));
                if to.starts_with(&from) {
                    return;
                }
                if let Some(node) = tree.remove(&from) {
                    tree.insert_node(&to, node);
                }
            }
            Edit::Chmod(i, x) => {
                if let Some(Node::File(m)) = tree.get(&p(NAMES[*i])) {
                    let m = FileMeta { executable: *x, ..*m };
                    tree.insert_node(&p(NAMES[*i]), Node::File(m));
                }
            }
            Edit::Mkdir(i) => tree.insert(&p(NAMES[*i]), Entry::Dir),
            Edit::Symlink(i, c) => tree.insert(&p(NAMES[*i]), Entry::Symlink { target: format!("../{c}") }),
        }
    }

    proptest! {
        /// Random edit sequences, synced at random points, always converge: equal roots.
        #[test]
        fn random_edit_sequences_converge(
            edits in prop::collection::vec((edit(), any::<bool>()), 1..60),
        ) {
            let mut local = TreeIndex::new();
            let mut remote = TreeIndex::new();
            for (e, sync_now) in &edits {
                perform(&mut local, e);
                if *sync_now {
                    sync(&local, &mut remote);
                    prop_assert_eq!(remote.root_hash(), local.root_hash());
                }
            }
            sync(&local, &mut remote);
            prop_assert_eq!(remote.root_hash(), local.root_hash());
            prop_assert!(diff(&local, &remote, &|_, _| false).is_empty(), "a synced pair has nothing left to do");
        }

        /// Kept remote paths are never deleted, and everything else converges.
        #[test]
        fn kept_paths_survive_any_sync(
            local_edits in prop::collection::vec(edit(), 0..30),
            remote_edits in prop::collection::vec(edit(), 0..30),
        ) {
            let mut local = TreeIndex::new();
            let mut remote = TreeIndex::new();
            for e in &local_edits {
                perform(&mut local, e);
            }
            for e in &remote_edits {
                perform(&mut remote, e);
            }
            // The host ignores "b/e" and what is below it: it never has it locally.
            let ignored = p("b/e");
            local.remove(&ignored);
            let kept_before = remote.get(&ignored).map(Node::digest);
            let keep = |path: &RelPath, _: bool| path.starts_with(&ignored);
            let ops = diff(&local, &remote, &keep);
            apply(&mut remote, &ops);
            prop_assert!(ops.iter().all(|op| !op.path().starts_with(&ignored)));
            let b_is_dir_both = matches!(local.get(&p("b")), Some(Node::Dir(_)));
            if b_is_dir_both {
                prop_assert_eq!(remote.get(&ignored).map(Node::digest), kept_before);
            }
            let mut remote_view = remote.clone();
            remote_view.remove(&ignored);
            if kept_before.is_none() || b_is_dir_both {
                prop_assert_eq!(remote_view.root_hash(), local.root_hash());
            }
        }
    }
}
