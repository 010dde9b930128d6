//! Objects by resource, namespace and name; one global resourceVersion counter (as etcd's
//! revision); the event log that watches replay; and the fan-out of new events.
//!
//! The store knows nothing of HTTP or of API semantics (defaults, validation, conflicts):
//! those live in `verbs`. It only keeps every write numbered and announced.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::resources::{RESOURCES, Resource, index_of};

/// How many events the log keeps: a watch from an older resourceVersion gets 410 Expired.
const LOG_CAPACITY: usize = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One write, as the log keeps it.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) rv: u64,
    pub(crate) res: usize,
    pub(crate) namespace: String,
    pub(crate) kind: EventType,
    /// The object after the write (for a deletion: as it was, with the deletion's rv).
    pub(crate) object: Value,
    /// The object before the write, for watches with selectors (a MODIFIED that leaves the
    /// selection is a DELETED for them).
    pub(crate) prev: Option<Value>,
}

type Key = (usize, String, String);

/// The logged events after a resourceVersion, and a receiver for the ones to come.
pub(crate) type Replay = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>);

pub(crate) struct Store {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    log: VecDeque<Arc<Event>>,
    /// Events with a resourceVersion up to this one are gone from the log.
    compacted: u64,
    tx: broadcast::Sender<Arc<Event>>,
}

impl Store {
    pub(crate) fn new() -> Self {
        let (tx, _) = broadcast::channel(65_536);
        Self { objects: BTreeMap::new(), rv: 0, log: VecDeque::new(), compacted: 0, tx }
    }

    /// A copy of the objects that announces nothing and logs nothing (for dry runs).
    pub(crate) fn scratch(&self) -> Store {
        let (tx, _) = broadcast::channel(16);
        Self { objects: self.objects.clone(), rv: self.rv, log: VecDeque::new(), compacted: self.rv, tx }
    }

    /// The current resourceVersion (that of the last write).
    pub(crate) fn rv(&self) -> u64 {
        self.rv
    }

    pub(crate) fn get(&self, res: &Resource, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(&(index_of(res), ns.to_owned(), name.to_owned()))
    }

    /// Objects of `res`, in one namespace or (None) in all, ordered by namespace and name.
    pub(crate) fn list(&self, res: &Resource, ns: Option<&str>) -> Vec<&Value> {
        let idx = index_of(res);
        self.objects
            .range((idx, String::new(), String::new())..)
            .take_while(|((i, _, _), _)| *i == idx)
            .filter(|((_, n, _), _)| ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v)
            .collect()
    }

    /// Objects of every resource in `ns` (for namespace deletion).
    pub(crate) fn keys_in_namespace(&self, ns: &str) -> Vec<(&'static Resource, String)> {
        self.objects.keys().filter(|(_, n, _)| n == ns).map(|(i, _, name)| (&RESOURCES[*i], name.clone())).collect()
    }

    /// Every object that has owner references: (resource, namespace, object).
    pub(crate) fn owned(&self) -> Vec<(&'static Resource, &Value)> {
        self.objects
            .iter()
            .filter(|(_, v)| v["metadata"]["ownerReferences"].as_array().is_some_and(|a| !a.is_empty()))
            .map(|((i, _, _), v)| (&RESOURCES[*i], v))
            .collect()
    }

    /// Whether any object has this uid.
    pub(crate) fn uid_exists(&self, uid: &str) -> bool {
        self.objects.values().any(|v| v["metadata"]["uid"] == uid)
    }

    /// Stores a new object (the caller checked it does not exist); returns it with its rv.
    pub(crate) fn insert(&mut self, res: &Resource, ns: &str, mut obj: Value) -> Value {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert((index_of(res), ns.to_owned(), name), obj.clone());
        self.emit(res, ns, EventType::Added, obj.clone(), None);
        obj
    }

    /// Replaces an existing object; returns it with its new rv.
    pub(crate) fn replace(&mut self, res: &Resource, ns: &str, mut obj: Value) -> Value {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let prev = self.objects.insert((index_of(res), ns.to_owned(), name), obj.clone());
        self.emit(res, ns, EventType::Modified, obj.clone(), prev);
        obj
    }

    /// Removes an object; the DELETED event (and the returned object) carry a new rv.
    pub(crate) fn remove(&mut self, res: &Resource, ns: &str, name: &str) -> Option<Value> {
        let mut obj = self.objects.remove(&(index_of(res), ns.to_owned(), name.to_owned()))?;
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.emit(res, ns, EventType::Deleted, obj.clone(), None);
        Some(obj)
    }

    fn emit(&mut self, res: &Resource, ns: &str, kind: EventType, object: Value, prev: Option<Value>) {
        let event = Arc::new(Event { rv: self.rv, res: index_of(res), namespace: ns.to_owned(), kind, object, prev });
        if self.log.len() == LOG_CAPACITY
            && let Some(old) = self.log.pop_front()
        {
            self.compacted = old.rv;
        }
        self.log.push_back(event.clone());
        // No receiver is fine: nobody watches.
        let _ = self.tx.send(event);
    }

    /// Every logged event after `rv`, and a receiver for the ones to come (taken together, so
    /// none is missed or seen twice). Err(oldest available rv) when `rv` is too old.
    pub(crate) fn since(&self, rv: u64) -> Result<Replay, u64> {
        if rv < self.compacted {
            return Err(self.compacted + 1);
        }
        let past = self.log.iter().filter(|e| e.rv > rv).cloned().collect();
        Ok((past, self.tx.subscribe()))
    }

    /// A receiver for events to come.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Forgets the event log, as an etcd compaction does: watches from any resourceVersion
    /// before now get 410 Expired.
    pub(crate) fn compact(&mut self) {
        self.log.clear();
        self.compacted = self.rv;
    }
}
