use super::*;

const T0: u64 = 1_800_000_000_000; // a whole minute, in ms

fn book(rpm: Option<u64>, tpm: Option<u64>, rpd: Option<u64>) -> Book {
    Book::new(
        QuotaLimits {
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
            requests_per_day: rpd,
            learn: true,
            max_input_tokens_per_request: None,
        },
        ClientLimits::default(),
        None,
    )
}

#[test]
fn a_project_is_full_after_its_rpm_until_the_first_request_leaves_the_minute() {
    let b = book(Some(10), None, None);
    assert!(b.quota_active());
    for i in 0..10 {
        assert!(matches!(
            b.quota_room("p1", "m", 0, T0 + i * 1000),
            Room::Free(_)
        ));
        b.charge_quota("p1", "m", 0, T0 + i * 1000);
    }
    // Counted for 61 s: a bucket is a whole second, so one more than Google's minute.
    assert_eq!(
        b.quota_room("p1", "m", 0, T0 + 10_000),
        Room::FullUntil(T0 + 61_000)
    );
    // Other projects and other models have their own quota.
    assert_eq!(b.quota_room("p2", "m", 0, T0 + 10_000), Room::Free(1.0));
    assert_eq!(b.quota_room("p1", "other", 0, T0 + 10_000), Room::Free(1.0));
    // The first request leaves the window: room for one.
    assert!(matches!(
        b.quota_room("p1", "m", 0, T0 + 60_999),
        Room::FullUntil(_)
    ));
    assert_eq!(b.quota_room("p1", "m", 0, T0 + 61_000), Room::Free(0.1));
}

#[test]
fn headroom_shrinks_as_requests_are_counted() {
    let b = book(Some(4), None, None);
    b.charge_quota("p1", "m", 0, T0);
    assert_eq!(b.quota_room("p1", "m", 0, T0), Room::Free(0.75));
}

#[test]
fn other_proxies_counts_add_up_and_age_out_by_slot() {
    let b = book(Some(10), None, None);
    let mut counts = RateCounts::new();
    let slot = T0 / SLOT_MS;
    counts.insert(
        RateWindow::Slot(slot),
        HashMap::from([(
            quota_name("p1", "m"),
            Counter {
                requests: 9,
                tokens: 0,
            },
        )]),
    );
    b.absorb(&counts, T0);
    b.charge_quota("p1", "m", 0, T0);
    // 9 elsewhere + 1 here: full until the other proxies' slot leaves the minute.
    assert_eq!(
        b.quota_room("p1", "m", 0, T0 + 5_000),
        Room::FullUntil(T0 + 61_000)
    );
    // Half of the slot has left the sliding minute: about half its count remains.
    match b.quota_room("p1", "m", 0, T0 + 66_000) {
        Room::Free(r) => assert!((r - 0.5).abs() < 0.11, "room {r}"),
        other => panic!("{other:?}"),
    }
    // Reading again replaces what was read before.
    b.absorb(&RateCounts::new(), T0 + 5_000);
    assert!(matches!(
        b.quota_room("p1", "m", 0, T0 + 5_000),
        Room::Free(_)
    ));
}

#[test]
fn tokens_per_minute_count_the_estimate_then_the_real_figure() {
    let b = book(None, Some(1000), None);
    b.charge_quota("p1", "m", 600, T0);
    assert!(matches!(
        b.quota_room("p1", "m", 500, T0),
        Room::FullUntil(_)
    ));
    // Three seconds later the answer ends: 100 input tokens, not 600. The second it was
    // charged in is corrected, and only the real figure is shared.
    b.charge_quota("p1", "m", 50, T0 + 3_000);
    b.settle_tokens(&quota_name("p1", "m"), T0, 600, Some(100));
    assert!(matches!(
        b.quota_room("p1", "m", 500, T0 + 3_000),
        Room::Free(_)
    ));
    match b.quota_room("p1", "m", 0, T0 + 3_000) {
        Room::Free(r) => assert!((r - 0.85).abs() < 1e-9, "150 of 1000 used: {r}"),
        other => panic!("{other:?}"),
    }
    let shared: u64 = b.take_pending(T0 + 3_000).iter().map(|d| d.tokens).sum();
    assert_eq!(
        shared, 100,
        "the estimate of the unsettled request stays local"
    );
    // No figure in the answer: the estimate stands and is shared.
    b.settle_tokens(&quota_name("p1", "m"), T0 + 3_000, 50, None);
    let shared: u64 = b.take_pending(T0 + 3_000).iter().map(|d| d.tokens).sum();
    assert_eq!(shared, 50);
    // A single request over the whole limit still goes when nothing else is counted.
    let empty = book(None, Some(1000), None);
    assert!(matches!(
        empty.quota_room("p1", "m", 5000, T0),
        Room::Free(_)
    ));
}

#[test]
fn requests_per_day_wait_for_pacific_midnight() {
    let b = book(None, None, Some(2));
    b.charge_quota("p1", "m", 0, T0);
    b.charge_quota("p1", "m", 0, T0 + 1);
    assert_eq!(
        b.quota_room("p1", "m", 0, T0 + 2),
        Room::FullUntil(keystore::pacific::next_pacific_midnight_ms(T0))
    );
}

#[test]
fn limits_are_learned_from_429s_unless_the_group_says_no() {
    let b = book(None, None, None);
    assert!(!b.quota_active());
    assert!(b.learn("p1", "m", Learned::RequestsPerMinute(2), T0, None));
    assert!(
        !b.learn("p1", "m", Learned::RequestsPerMinute(2), T0, None),
        "unchanged"
    );
    assert!(b.quota_active());
    b.charge_quota("p1", "m", 0, T0);
    b.charge_quota("p1", "m", 0, T0);
    assert!(matches!(b.quota_room("p1", "m", 0, T0), Room::FullUntil(_)));
    // Google says the minute is spent until T0 + 20 s: counted or not, it is full until then.
    let fresh = book(None, None, None);
    fresh.learn(
        "p2",
        "m",
        Learned::RequestsPerMinute(10),
        T0,
        Some(T0 + 20_000),
    );
    assert_eq!(
        fresh.quota_room("p2", "m", 0, T0 + 1_000),
        Room::FullUntil(T0 + 20_000)
    );
    assert!(matches!(
        fresh.quota_room("p2", "m", 0, T0 + 20_000),
        Room::Free(_)
    ));
    assert!(
        fresh.take_pending(T0 + 1_000).is_empty(),
        "the filler is not shared"
    );
    // Learned limits are trusted for an hour.
    assert!(matches!(
        fresh.quota_room("p2", "m", 0, T0 + LEARNED_FOR.as_millis() as u64 + 1_000),
        Room::Free(_)
    ));
    // A configured limit and a learned one: the tighter wins.
    let c = book(Some(100), None, None);
    c.learn("p1", "m", Learned::RequestsPerMinute(1), T0, None);
    c.charge_quota("p1", "m", 0, T0);
    assert!(matches!(c.quota_room("p1", "m", 0, T0), Room::FullUntil(_)));

    let no = Book::new(
        QuotaLimits {
            learn: false,
            ..QuotaLimits::default()
        },
        ClientLimits::default(),
        None,
    );
    assert!(!no.learn("p1", "m", Learned::RequestsPerMinute(2), T0, None));
    assert!(!no.quota_active());
}

#[test]
fn clients_have_their_own_allowance() {
    let b = Book::new(
        QuotaLimits::default(),
        ClientLimits {
            requests_per_minute: Some(2),
            tokens_per_minute: Some(100),
        },
        None,
    );
    assert!(b.clients_limited() && b.wants_sharing() && !b.quota_active());
    b.charge_client("alice", 10, T0);
    b.charge_client("alice", 10, T0 + 1000);
    assert_eq!(
        b.client_room("alice", 10, T0 + 2000),
        Room::FullUntil(T0 + 61_000)
    );
    assert!(matches!(b.client_room("bob", 10, T0 + 2000), Room::Free(_)));
    b.charge_client("bob", 90, T0);
    assert!(matches!(b.client_room("bob", 20, T0), Room::FullUntil(_)));
}

#[test]
fn pending_counts_go_out_once_per_slot_and_day_and_survive_a_new_snapshot() {
    let b = book(Some(10), None, None);
    b.charge_quota("p1", "m", 7, T0);
    b.charge_quota("p1", "m", 0, T0 + SLOT_MS);
    let mut out = b.take_pending(T0 + SLOT_MS);
    out.sort_by(|a, b| a.window.cmp(&b.window));
    assert_eq!(out.len(), 3, "{out:?}");
    let slots: Vec<_> = out
        .iter()
        .filter(|d| matches!(d.window, RateWindow::Slot(_)))
        .map(|d| (d.requests, d.tokens))
        .collect();
    assert_eq!(slots, vec![(1, 0), (1, 0)], "tokens go out when settled");
    let day = out.iter().find(|d| matches!(d.window, RateWindow::Day(_)));
    assert_eq!(day.map(|d| d.requests), Some(2));
    assert!(b.take_pending(T0 + SLOT_MS).is_empty());
    let next = Book::new(b.limits, b.client_limits, Some(&b));
    assert_eq!(next.quota_room("p1", "m", 0, T0 + SLOT_MS), Room::Free(0.8));
}

#[test]
fn idle_counters_are_dropped_and_their_number_is_bounded() {
    let b = book(Some(10), None, None);
    for i in 0..(MAX_COUNTERS + 50) {
        b.charge_quota("p1", &format!("made-up-{i}"), 0, T0);
    }
    assert_eq!(b.lock().len(), MAX_COUNTERS);
    b.take_pending(T0);
    assert_eq!(b.lock().len(), MAX_COUNTERS, "counted this minute: kept");
    b.take_pending(T0 + 61_000);
    assert!(
        b.lock().is_empty(),
        "a minute later nothing is counted: dropped"
    );
}

#[test]
fn new_limits_from_the_user_forget_learned_ones() {
    let b = book(None, None, None);
    b.learn("p1", "m", Learned::RequestsPerMinute(1), T0, None);
    b.charge_quota("p1", "m", 0, T0);
    assert!(matches!(b.quota_room("p1", "m", 0, T0), Room::FullUntil(_)));
    let same = Book::new(b.limits, b.client_limits, Some(&b));
    assert!(matches!(
        same.quota_room("p1", "m", 0, T0),
        Room::FullUntil(_)
    ));
    let raised = Book::new(
        QuotaLimits {
            requests_per_minute: Some(1000),
            ..QuotaLimits::default()
        },
        ClientLimits::default(),
        Some(&same),
    );
    let r = raised.quota_room("p1", "m", 0, T0);
    assert!(matches!(r, Room::Free(_)), "{r:?}");
}

#[test]
fn only_generating_calls_count() {
    assert!(
        counts("generateContent") && counts("streamGenerateContent") && counts("chat/completions")
    );
    assert!(!counts("countTokens") && !counts("models") && !counts("files") && !counts("upload"));
}
