//! Reaching a sidecar through the API server's port-forward: a byte stream to its TCP port,
//! which QUIC is framed over. Works wherever kubectl works, whatever the cluster's network.

use std::sync::Arc;

use futures_util::FutureExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use super::Cluster;
use crate::session::{ByteStream, StreamOpener};

/// Opens a new port-forward to `port` of `pod` on every call.
pub fn opener(cluster: &Cluster, pod: &str, port: u16) -> StreamOpener {
    let (cluster, pod) = (cluster.clone(), pod.to_owned());
    Arc::new(move || {
        let (cluster, pod) = (cluster.clone(), pod.clone());
        async move {
            let api: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
            let mut forwarder = api
                .portforward(&pod, &[port])
                .await
                .map_err(|e| cluster.explain(e, &format!("cannot port-forward to pod {pod}")))?;
            let stream = forwarder.take_stream(port).expect("the port asked for");
            if let Some(error) = forwarder.take_error(port) {
                let pod = pod.clone();
                tokio::spawn(async move {
                    if let Some(message) = error.await {
                        tracing::warn!("port-forward to pod {pod}: {message}");
                    }
                });
            }
            // The forwarder's task runs on until the stream closes.
            Ok(Box::new(stream) as Box<dyn ByteStream>)
        }
        .boxed()
    })
}
