//! The resources the fake serves: group, version, plural, kind, scope, and the typed check
//! that an object parses as its k8s-openapi type (as the server's decoder would).

use k8s_openapi::api::{admissionregistration, apps, core, rbac};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// One served resource.
#[derive(Debug)]
pub(crate) struct Resource {
    pub(crate) group: &'static str,
    pub(crate) version: &'static str,
    pub(crate) plural: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) namespaced: bool,
    /// Decodes the object as its typed form and encodes it again, as the server stores what
    /// it decoded: fields its type does not know are gone. The error is serde's message.
    pub(crate) decode: fn(&Value) -> Result<Value, String>,
}

impl Resource {
    /// `deployments.apps`, or `pods` for the core group: how messages name the resource.
    pub(crate) fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.to_owned() } else { format!("{}.{}", self.plural, self.group) }
    }

    /// `apps/v1`, or `v1` for the core group.
    pub(crate) fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_owned() } else { format!("{}/{}", self.group, self.version) }
    }

    pub(crate) fn is(&self, group: &str, plural: &str) -> bool {
        self.group == group && self.plural == plural
    }
}

fn decode<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let typed = serde_json::from_value::<T>(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

macro_rules! res {
    ($group:literal, $plural:literal, $kind:literal, $ns:literal, $ty:ty) => {
        Resource { group: $group, version: "v1", plural: $plural, kind: $kind, namespaced: $ns, decode: decode::<$ty> }
    };
}

/// Every served resource. Indexes into this table identify resources in the store.
pub(crate) static RESOURCES: &[Resource] = &[
    res!("", "namespaces", "Namespace", false, core::v1::Namespace),
    res!("", "pods", "Pod", true, core::v1::Pod),
    res!("", "secrets", "Secret", true, core::v1::Secret),
    res!("", "services", "Service", true, core::v1::Service),
    res!("", "serviceaccounts", "ServiceAccount", true, core::v1::ServiceAccount),
    res!("", "configmaps", "ConfigMap", true, core::v1::ConfigMap),
    res!("apps", "deployments", "Deployment", true, apps::v1::Deployment),
    res!("apps", "statefulsets", "StatefulSet", true, apps::v1::StatefulSet),
    res!("apps", "daemonsets", "DaemonSet", true, apps::v1::DaemonSet),
    res!("apps", "replicasets", "ReplicaSet", true, apps::v1::ReplicaSet),
    res!(
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        false,
        admissionregistration::v1::MutatingWebhookConfiguration
    ),
    res!("rbac.authorization.k8s.io", "roles", "Role", true, rbac::v1::Role),
    res!("rbac.authorization.k8s.io", "rolebindings", "RoleBinding", true, rbac::v1::RoleBinding),
    res!("rbac.authorization.k8s.io", "clusterroles", "ClusterRole", false, rbac::v1::ClusterRole),
    res!("rbac.authorization.k8s.io", "clusterrolebindings", "ClusterRoleBinding", false, rbac::v1::ClusterRoleBinding),
];

/// The resource served at `group`/`version`/`plural`.
pub(crate) fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource of an object, from its `apiVersion` and `kind`.
pub(crate) fn of_object(obj: &Value) -> Option<&'static Resource> {
    let api_version = obj["apiVersion"].as_str()?;
    let kind = obj["kind"].as_str()?;
    RESOURCES.iter().find(|r| r.api_version() == api_version && r.kind == kind)
}

pub(crate) fn by_plural(group: &str, plural: &str) -> &'static Resource {
    RESOURCES.iter().find(|r| r.is(group, plural)).expect("a served resource")
}

pub(crate) fn index_of(res: &Resource) -> usize {
    RESOURCES.iter().position(|r| std::ptr::eq(r, res)).expect("a served resource")
}
