use keystore::{Cooldown, CooldownReason, GroupSnapshot, MemoryStore, Transition, UsageDelta};

use super::*;

const NOW: u64 = 1_800_000_000_000;

#[tokio::test]
async fn a_store_report_has_states_reasons_ends_and_last_hour_usage() {
    let store = MemoryStore::new();
    let mut g = GroupSnapshot::for_test("team", &["status-key-one-1", "status-key-two-2"]);
    g.keys[0].project = Some("proj-a".into());
    g.keys[1].project = Some("proj-b".into());
    store.publish_group(g.clone()).await.unwrap();
    let (k0, k1) = (g.keys[0].id.clone(), g.keys[1].id.clone());
    let now = keystore::clock::now_ms();
    store
        .transition(
            "team",
            std::slice::from_ref(&k1),
            &Transition::Cool(Cooldown {
                until_ms: now + 42_000,
                reason: CooldownReason::PerMinuteQuota,
                model: Some("gemini-2.5-flash".into()),
            }),
            "p1",
        )
        .await
        .unwrap();
    let mut counts = UsageCounts::default();
    counts.add(&UsageDelta {
        group: "team".into(),
        key: k0.clone(),
        scope: "proj-a".into(),
        requests: 7,
        tokens: 700,
        at_ms: now,
    });
    store
        .put_usage_totals("team", "p1", vec![(UsageWindow::minute_of(now), counts)])
        .await
        .unwrap();

    let r = of_store(&store, now).await.unwrap();
    let team = &r.groups[0];
    let (a, b) = (&team.keys[0], &team.keys[1]);
    assert_eq!((a.id.as_str(), a.state.as_str()), (k0.as_str(), "Active"));
    assert_eq!((a.requests_last_hour, a.tokens_last_hour), (7, 700));
    assert_eq!(b.state, "CoolingDown");
    assert_eq!(b.reason.as_deref(), Some("PerMinuteQuota"));
    assert_eq!(b.model.as_deref(), Some("gemini-2.5-flash"));
    assert_eq!(b.until_ms, Some(now + 42_000));
    assert_eq!(team.projects[0].name, "proj-a");
    assert_eq!(team.projects[0].requests, 7);
    assert_eq!(team.minutes.len(), 60);
    assert_eq!(team.minutes[59].requests, 7, "the current minute is last");
    assert_eq!(team.minutes.iter().map(|m| m.requests).sum::<u64>(), 7);

    let text = render_text(&r);
    assert!(
        text.contains("group team (Open, RoundRobin): 1 of 2 keys active"),
        "{text}"
    );
    let line = text.lines().find(|l| l.starts_with(k1.as_str())).unwrap();
    for part in [
        "proj-b",
        "CoolingDown",
        "PerMinuteQuota (gemini-2.5-flash)",
        "42 s",
    ] {
        assert!(line.contains(part), "{part} not in {line:?}");
    }
    assert!(!text.contains("status-key-one-1"), "{text}");
}

#[test]
fn reports_are_bounded() {
    let keys: Vec<KeyFacts<'_>> = (0..MAX_KEYS + 5)
        .map(|_| KeyFacts {
            id: "k-x",
            project: None,
            disabled: false,
            status: KeyStatus::default(),
            health: None,
            in_flight: 0,
        })
        .collect();
    let g = group_view(
        &GroupSnapshot::for_test("g", &[]),
        keys,
        &UsageCounts::default(),
        Vec::new(),
        NOW,
    );
    assert_eq!(g.keys.len(), MAX_KEYS);
    assert_eq!(g.keys_omitted, 5);
    assert!(
        render_text(&Report {
            groups: vec![g],
            ..Report::default()
        })
        .contains("... and 5 more keys")
    );
}
