use super::*;
use crate::health::KeyHealth;
use crate::state::{Cooldown, CooldownReason, InvalidReason};

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn publish_is_versioned_and_idempotent() {
    block_on(async {
        let store = MemoryStore::new();
        let mut events = store.subscribe();
        let g = GroupSnapshot::for_test("default", &["fake-a", "fake-b"]);
        assert_eq!(store.publish_group(g.clone()).await.unwrap(), 1);
        assert_eq!(store.publish_group(g.clone()).await.unwrap(), 1);
        let mut changed = g.clone();
        changed.keys.pop();
        assert_eq!(store.publish_group(changed).await.unwrap(), 2);
        assert_eq!(
            events.recv().await.unwrap(),
            StoreEvent::GroupChanged {
                name: "default".into(),
                version: 1
            }
        );
        assert_eq!(
            events.recv().await.unwrap(),
            StoreEvent::GroupChanged {
                name: "default".into(),
                version: 2
            }
        );
        assert!(events.try_recv().is_err(), "the idempotent publish emitted");
        let groups = store.groups().await.unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].keys.len(), 1);
    });
}

#[test]
fn transitions_are_applied_published_and_dropped_with_their_key() {
    block_on(async {
        let store = MemoryStore::new();
        let g = GroupSnapshot::for_test("g", &["fake-a", "fake-b"]);
        let (a, b) = (g.keys[0].id.clone(), g.keys[1].id.clone());
        store.publish_group(g.clone()).await.unwrap();
        let mut events = store.subscribe();
        let cool = Transition::Cool(Cooldown {
            until_ms: now_ms() + 60_000,
            reason: CooldownReason::PerDayQuota,
            model: None,
        });
        let changed = store
            .transition("g", &[a.clone(), b.clone()], &cool, "pod-1")
            .await
            .unwrap();
        assert_eq!(changed.len(), 2);
        match events.recv().await.unwrap() {
            StoreEvent::KeysChanged {
                group,
                origin,
                changes,
            } => {
                assert_eq!((group.as_str(), origin.as_str()), ("g", "pod-1"));
                assert_eq!(changes.len(), 2);
            }
            other => panic!("unexpected event {other:?}"),
        }
        // The same cooldown again changes nothing and publishes nothing.
        assert!(
            store
                .transition("g", std::slice::from_ref(&a), &cool, "pod-2")
                .await
                .unwrap()
                .is_empty()
        );
        assert!(events.try_recv().is_err());

        let retire = Transition::Retire {
            reason: InvalidReason::ApiKeyInvalid,
        };
        store
            .transition("g", std::slice::from_ref(&b), &retire, "pod-1")
            .await
            .unwrap();
        assert_eq!(
            store.key_statuses("g").await.unwrap()[&b].invalid,
            Some(InvalidReason::ApiKeyInvalid)
        );

        // b leaves the group: its state goes too.
        let mut smaller = g.clone();
        smaller.keys.truncate(1);
        store.publish_group(smaller).await.unwrap();
        let statuses = store.key_statuses("g").await.unwrap();
        assert!(statuses.contains_key(&a));
        assert!(!statuses.contains_key(&b));

        assert!(matches!(
            store.transition("nope", &[a], &retire, "x").await,
            Err(StoreError::UnknownGroup(_))
        ));
    });
}

#[test]
fn health_reports_expire() {
    block_on(async {
        let store = MemoryStore::new();
        let report = |proxy: &str| HealthReport {
            proxy_id: proxy.into(),
            group: "g".into(),
            at_ms: now_ms(),
            keys: vec![KeyHealth {
                id: KeyId::of("fake"),
                score: 0.5,
                requests: 3,
                failures: 1,
                last_error: None,
            }],
        };
        store
            .report_health(report("p1"), Duration::from_secs(60))
            .await
            .unwrap();
        store
            .report_health(report("p2"), Duration::from_millis(0))
            .await
            .unwrap();
        let reports = store.health_reports("g").await.unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].proxy_id, "p1");
        store.remove_group("g").await.unwrap();
        assert!(store.health_reports("g").await.unwrap().is_empty());
    });
}
