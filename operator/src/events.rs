//! Events (`events.k8s.io/v1`) about a group, one per thing that happened.
//!
//! kube-runtime's `Recorder` folds Events with the same reason into one series, so three keys
//! added became one "key k-... added (x3)" and two key ids were never shown. Here every Event has
//! a name derived from what it reports (the group's uid and a dedup token: an audit entry's id,
//! a key and the cooldown it left, a generation and a message). Publishing the same thing twice,
//! by a restarted operator or by a new leader after a handover, answers 409 and is not an Event
//! twice.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::{Client, Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::crd::GeminiKeyGroup;

/// The Events API refuses notes over 1 kB.
const NOTE_MAX: usize = 1024;

/// One Event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
    /// What makes this Event unique among the group's Events (never the key itself).
    pub dedup: String,
}

/// Publishes Events for groups as one reporting controller and instance.
#[derive(Clone)]
pub struct EventSink {
    client: Client,
    controller: String,
    instance: String,
}

impl EventSink {
    pub fn new(client: Client, controller: &str, instance: String) -> Self {
        Self {
            client,
            controller: controller.to_owned(),
            instance,
        }
    }

    /// The Event's name: the group's name and a digest of its uid and the dedup token.
    pub fn name_for(g: &GeminiKeyGroup, dedup: &str) -> String {
        let mut h = Sha256::new();
        h.update(g.uid().unwrap_or_default().as_bytes());
        h.update([0]);
        h.update(dedup.as_bytes());
        let digest = h.finalize();
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let mut base = g.name_any();
        base.truncate(253 - 17);
        format!("{base}.{hex}")
    }

    /// The Event for `note` about `g`, as it is sent.
    pub fn event(&self, g: &GeminiKeyGroup, note: &Note) -> Event {
        let reference: ObjectReference = g.object_ref(&());
        Event {
            metadata: ObjectMeta {
                name: Some(Self::name_for(g, &note.dedup)),
                namespace: g.namespace(),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            action: Some("Reconcile".into()),
            reason: Some(note.reason.to_owned()),
            note: Some(crate::plan::bounded(note.note.clone(), NOTE_MAX)),
            type_: Some(if note.warning { "Warning" } else { "Normal" }.into()),
            regarding: Some(reference),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        }
    }

    /// Creates the Event; one that exists already (the same thing reported before) is fine.
    pub async fn publish(&self, g: &GeminiKeyGroup, note: &Note) {
        let ns = g.namespace().unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        match api
            .create(&PostParams::default(), &self.event(g, note))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                tracing::warn!(error = %e, reason = note.reason, group = %g.name_any(), "cannot publish an event")
            }
        }
    }
}
