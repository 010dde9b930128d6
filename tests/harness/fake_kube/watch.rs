//! Watches: a chunked stream of newline-delimited `{"type": …, "object": …}` events, from a
//! resourceVersion (replayed from the store's log) or from now (synthetic ADDED for what
//! exists), filtered by namespace and selectors, with bookmarks and a timeout; 410 Expired as
//! an ERROR event when the history asked for is gone.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::Shared;
use super::errors::ApiError;
use super::resources::{Resource, index_of};
use super::selector::{FieldSelector, LabelSelector};
use super::server::{Body, Query};
use super::store::{Event, EventType};

/// How often a watch that allows bookmarks gets one (the real server: about a minute).
const BOOKMARK_EVERY: Duration = Duration::from_secs(5);

struct Filter {
    res: usize,
    namespace: Option<String>,
    label: LabelSelector,
    field: FieldSelector,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        self.label.matches_object(obj) && self.field.matches(obj)
    }

    /// The event this watch sees for a store event, if any: selectors turn a MODIFIED into an
    /// ADDED (now matches) or a DELETED (no longer matches).
    fn view(&self, e: &Event) -> Option<(&'static str, Value)> {
        if e.res != self.res || self.namespace.as_ref().is_some_and(|ns| *ns != e.namespace) {
            return None;
        }
        let now = self.matches(&e.object);
        match e.kind {
            EventType::Modified => {
                let before = e.prev.as_ref().is_some_and(|p| self.matches(p));
                match (before, now) {
                    (true, true) => Some(("MODIFIED", e.object.clone())),
                    (false, true) => Some(("ADDED", e.object.clone())),
                    (true, false) => Some(("DELETED", e.object.clone())),
                    (false, false) => None,
                }
            }
            kind => now.then(|| (kind.as_str(), e.object.clone())),
        }
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn bookmark(res: &Resource, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line("BOOKMARK", &json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": meta}))
}

/// Starts a watch; the response streams until the timeout, the client leaves, or the watch
/// falls too far behind (then the client resumes from its last resourceVersion).
pub(crate) fn start(
    shared: &Arc<Shared>,
    res: &'static Resource,
    ns: Option<&str>,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let label =
        LabelSelector::parse(query.get("labelSelector").unwrap_or_default()).map_err(|e| ApiError::bad_request(&e))?;
    let field = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default(), res.kind)
        .map_err(|e| ApiError::bad_request(&e))?;
    let filter = Filter { res: index_of(res), namespace: ns.map(str::to_owned), label, field };
    let timeout = query.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).unwrap_or(1800);
    let bookmarks = query.flag("allowWatchBookmarks");
    let initial_events = query.flag("sendInitialEvents");
    let rv = query.get("resourceVersion").unwrap_or_default();

    let (tx, rx) = mpsc::channel::<Bytes>(4096);
    let mut first = Vec::new();
    let receiver: Option<(broadcast::Receiver<Arc<Event>>, u64)>;
    {
        let store = shared.store();
        if rv.is_empty() || rv == "0" {
            for obj in store.list(res, ns) {
                if filter.matches(obj) {
                    first.push(line("ADDED", obj));
                }
            }
            if initial_events {
                first.push(bookmark(res, store.rv(), true));
            }
            receiver = Some((store.subscribe(), store.rv()));
        } else {
            let n = rv.parse::<u64>().map_err(|_| {
                ApiError::bad_request(&format!(
                    "invalid resource version: strconv.ParseUint: parsing {rv:?}: invalid syntax"
                ))
            })?;
            match store.since(n) {
                Ok((past, rx)) => {
                    for e in &past {
                        if let Some((kind, obj)) = filter.view(e) {
                            first.push(line(kind, &obj));
                        }
                    }
                    receiver = Some((rx, store.rv().max(n)));
                }
                Err(oldest) => {
                    first.push(line("ERROR", &ApiError::gone_too_old(n, oldest).status));
                    receiver = None;
                }
            }
        }
    }
    let mut epoch = shared.watch_epoch.subscribe();
    tokio::spawn(async move {
        for b in first {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        let Some((mut events, mut last_rv)) = receiver else { return };
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                () = &mut deadline => return,
                () = tx.closed() => return,
                _ = epoch.changed() => return,
                _ = tick.tick(), if bookmarks => {
                    if tx.send(bookmark(res, last_rv, false)).await.is_err() {
                        return;
                    }
                }
                e = events.recv() => match e {
                    Ok(e) => {
                        last_rv = last_rv.max(e.rv);
                        if let Some((kind, obj)) = filter.view(&e)
                            && tx.send(line(kind, &obj)).await.is_err()
                        {
                            return;
                        }
                    }
                    // Too slow a reader: end the watch; the client resumes from its last rv.
                    Err(_) => return,
                },
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let b = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
    });
    Ok(Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(StreamBody::new(stream).boxed_unsync())
        .expect("a valid response"))
}
