//! The events channel: the pub/sub listener, re-established after any loss, and the wire form
//! of its messages.

use super::keys::parse_changes;
use super::*;

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum Wire {
    Group {
        name: String,
        version: u64,
    },
    Removed {
        name: String,
    },
    Keys {
        group: String,
        origin: String,
        changes: Vec<(String, String)>,
    },
    Unbound {
        resource: String,
    },
}

/// The pub/sub listener: forwards events; after every (re)connection, a `Resync`.
pub(super) async fn listen(
    conn: Arc<Connector>,
    channel: String,
    events: broadcast::Sender<StoreEvent>,
    subscribed: Arc<AtomicBool>,
) {
    loop {
        let link = async {
            let client = conn.pubsub_client().await?;
            let mut ps = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
                .await
                .map_err(|_| {
                    RedisError::from((redis::ErrorKind::Io, "pub/sub connect timed out"))
                })??;
            ps.subscribe(&channel).await?;
            Ok::<_, RedisError>(ps)
        }
        .await;
        match link {
            Ok(mut ps) => {
                subscribed.store(true, Ordering::Relaxed);
                // Whatever was published before the subscription took hold (a group made while
                // a proxy was starting, or during an outage) is read again: without this, a new
                // group would wait for the next periodic reload.
                let _ = events.send(StoreEvent::Resync);
                let mut stream = ps.on_message();
                while let Some(msg) = stream.next().await {
                    let Ok(payload) = msg.get_payload::<String>() else {
                        continue;
                    };
                    if let Some(ev) = parse_event(&payload) {
                        let _ = events.send(ev);
                    }
                }
                subscribed.store(false, Ordering::Relaxed);
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

fn parse_event(payload: &str) -> Option<StoreEvent> {
    Some(match serde_json::from_str::<Wire>(payload).ok()? {
        Wire::Group { name, version } => StoreEvent::GroupChanged { name, version },
        Wire::Removed { name } => StoreEvent::GroupRemoved { name },
        Wire::Keys {
            group,
            origin,
            changes,
        } => StoreEvent::KeysChanged {
            group,
            origin,
            changes: parse_changes(&changes),
        },
        Wire::Unbound { resource } => StoreEvent::Unbound { resource },
    })
}
