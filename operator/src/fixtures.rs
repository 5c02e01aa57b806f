//! Chainable test fixtures: groups and Secrets as the API server would hand them over.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::crd::{
    Access, AccessMode, GeminiKeyGroup, GeminiKeyGroupSpec, KeyRef, KeySelector, SecretRef,
};
use crate::plan::OPT_IN_LABEL;

pub struct GroupFixture(GeminiKeyGroup);

impl GroupFixture {
    /// An Open group with no keys yet.
    pub fn new(namespace: &str, name: &str) -> Self {
        let spec: GeminiKeyGroupSpec =
            serde_json::from_value(serde_json::json!({"access": {"mode": "Open"}}))
                .unwrap_or_else(|e| panic!("fixture spec: {e}"));
        let mut g = GeminiKeyGroup::new(name, spec);
        g.metadata.namespace = Some(namespace.to_owned());
        g.metadata.uid = Some(format!("uid-{name}"));
        g.metadata.generation = Some(1);
        g.metadata.resource_version = Some("1".into());
        Self(g)
    }

    pub fn key(mut self, secret: &str, entry: &str) -> Self {
        self.0.spec.keys.push(KeyRef {
            secret: secret.into(),
            entry: entry.into(),
            project: None,
            weight: None,
            disabled: false,
        });
        self
    }

    pub fn project(mut self, project: &str) -> Self {
        if let Some(k) = self.0.spec.keys.last_mut() {
            k.project = Some(project.into());
        }
        self
    }

    pub fn selector(mut self, label: &str, value: &str) -> Self {
        self.0.spec.key_selector = Some(KeySelector {
            match_labels: Some(BTreeMap::from([(label.to_owned(), value.to_owned())])),
            match_expressions: None,
        });
        self
    }

    pub fn tokens(mut self, secret: &str) -> Self {
        self.0.spec.access = Access {
            mode: AccessMode::Token,
            client_secret_refs: vec![SecretRef {
                name: secret.into(),
            }],
            client_limits: None,
        };
        self
    }

    /// Project quotas: requests per minute and per day.
    pub fn limits(mut self, rpm: u64, rpd: u64) -> Self {
        self.0.spec.limits = Some(crate::crd::Limits {
            requests_per_minute: Some(rpm),
            tokens_per_minute: None,
            requests_per_day: Some(rpd),
            learn: Some(false),
            max_input_tokens_per_request: None,
        });
        self
    }

    /// Requests per minute per client token.
    pub fn client_limit(mut self, rpm: u64) -> Self {
        self.0.spec.access.client_limits = Some(crate::crd::ClientLimits {
            requests_per_minute: Some(rpm),
            tokens_per_minute: None,
        });
        self
    }

    pub fn upstream(mut self, url: &str) -> Self {
        self.0.spec.upstream.url = url.into();
        self
    }

    pub fn finalized(mut self) -> Self {
        self.0.metadata.finalizers = Some(vec![crate::controller::FINALIZER.into()]);
        self
    }

    pub fn build(self) -> GeminiKeyGroup {
        self.0
    }
}

/// A Secret with string entries that opted in (label `gemini-proxy.io/opt-in: "true"`).
pub fn secret(namespace: &str, name: &str, entries: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                OPT_IN_LABEL.to_owned(),
                "true".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(
            entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// The same Secret without the opt-in label (the operator must not read it).
pub fn not_opted_in(mut s: Secret) -> Secret {
    if let Some(l) = s.metadata.labels.as_mut() {
        l.remove(OPT_IN_LABEL);
    }
    s
}

/// The same Secret with a label.
pub fn labelled(mut s: Secret, label: &str, value: &str) -> Secret {
    s.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(label.into(), value.into());
    s
}
