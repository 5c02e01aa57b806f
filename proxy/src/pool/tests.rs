use super::*;
use keystore::{Cooldown, CooldownReason, GroupSnapshot, InvalidReason, Transition};

use crate::routes::Api;
use crate::upstream::Upstream;

fn pool(keys: &[&str], rotation: RotationStrategy) -> Pool {
    let mut snap = GroupSnapshot::for_test("g", keys);
    snap.rotation = rotation;
    let upstream = Upstream::new(&snap.upstream).unwrap();
    Pool::build(snap, None, &HashMap::new(), upstream)
}

fn any_model() -> ModelOf<'static> {
    ModelOf::new(
        Api::Native,
        "/v1beta/models/gemini-2.5-flash:generateContent",
        b"",
    )
}

fn picks(p: &Pool, n: usize) -> Vec<usize> {
    (0..n)
        .map(|_| match p.pick(&any_model(), &[], 1_000) {
            Pick::Key(i) => i,
            other => panic!("no key: {other:?}"),
        })
        .collect()
}

fn cool(p: &Pool, i: usize, until_ms: u64, model: Option<&str>) {
    p.members[i].slot.apply(
        &Transition::Cool(Cooldown {
            until_ms,
            reason: CooldownReason::PerMinuteQuota,
            model: model.map(str::to_owned),
        }),
        0,
    );
}

#[test]
fn round_robin_is_fair() {
    let p = pool(&["a", "b", "c"], RotationStrategy::RoundRobin);
    let mut counts = [0; 3];
    for i in picks(&p, 300) {
        counts[i] += 1;
    }
    assert_eq!(counts, [100, 100, 100]);
}

#[test]
fn weighted_follows_weights_smoothly() {
    let mut snap = GroupSnapshot::for_test("g", &["a", "b", "c"]);
    snap.rotation = RotationStrategy::Weighted;
    snap.keys[0].weight = 5;
    let upstream = Upstream::new(&snap.upstream).unwrap();
    let p = Pool::build(snap, None, &HashMap::new(), upstream);
    let seq = picks(&p, 7);
    assert_eq!(seq.iter().filter(|&&i| i == 0).count(), 5);
    // Smooth: the heavy key never runs more than three times in a row.
    assert!(
        !seq.windows(4).any(|w| w.iter().all(|&i| i == 0)),
        "{seq:?}"
    );
    assert_eq!(smooth_weighted_order(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
}

#[test]
fn least_loaded_prefers_idle_and_healthy_keys() {
    let p = pool(&["a", "b", "c"], RotationStrategy::LeastLoaded);
    let _busy_a = p.members[0].slot.start();
    let _busy_b = p.members[1].slot.start();
    assert_eq!(picks(&p, 5), vec![2; 5]);
    // c is sick: a busy but healthy key wins over it.
    for _ in 0..20 {
        p.members[2].slot.record_failure("timeout");
    }
    let chosen = picks(&p, 4);
    assert!(chosen.iter().all(|&i| i != 2), "{chosen:?}");
}

#[test]
fn cooling_retired_disabled_and_tried_keys_are_skipped() {
    let p = pool(&["a", "b", "c"], RotationStrategy::RoundRobin);
    cool(&p, 0, 5_000, None);
    p.members[1].slot.apply(
        &Transition::Retire {
            reason: InvalidReason::ApiKeyInvalid,
        },
        0,
    );
    assert_eq!(picks(&p, 3), vec![2, 2, 2]);
    // c was tried by this request and is still usable: Tried, not Cooling.
    assert_eq!(p.pick(&any_model(), &[2], 1_000), Pick::Tried);
    cool(&p, 2, 7_000, None);
    assert_eq!(p.pick(&any_model(), &[], 1_000), Pick::Cooling(5_000));
    // Once the cooldown runs out, a is back.
    assert_eq!(p.pick(&any_model(), &[2], 5_000), Pick::Key(0));
}

#[test]
fn model_cooldowns_only_hold_back_that_model() {
    let p = pool(&["a"], RotationStrategy::RoundRobin);
    cool(&p, 0, 9_000, Some("gemini-2.5-pro"));
    let pro = ModelOf::new(
        Api::Native,
        "/v1beta/models/gemini-2.5-pro:generateContent",
        b"",
    );
    let flash = ModelOf::new(
        Api::Native,
        "/v1/models/gemini-2.5-flash:streamGenerateContent",
        b"",
    );
    let openai_pro = ModelOf::new(
        Api::OpenAi,
        "/v1beta/openai/chat/completions",
        br#"{"model":"gemini-2.5-pro"}"#,
    );
    assert_eq!(p.pick(&pro, &[], 1_000), Pick::Cooling(9_000));
    assert_eq!(p.pick(&openai_pro, &[], 1_000), Pick::Cooling(9_000));
    assert_eq!(p.pick(&flash, &[], 1_000), Pick::Key(0));
}

#[test]
fn all_retired_means_no_keys() {
    let p = pool(&["a"], RotationStrategy::RoundRobin);
    p.members[0].slot.apply(
        &Transition::Retire {
            reason: InvalidReason::Leaked,
        },
        0,
    );
    assert_eq!(p.pick(&any_model(), &[], 1), Pick::NoKeys);
    assert!(!p.has_usable_key());
}

#[test]
fn same_quota_groups_keys_by_project() {
    let mut snap = GroupSnapshot::for_test("g", &["a", "b", "c"]);
    snap.keys[0].project = Some("p1".into());
    snap.keys[2].project = Some("p1".into());
    let upstream = Upstream::new(&snap.upstream).unwrap();
    let p = Pool::build(snap, None, &HashMap::new(), upstream);
    assert_eq!(p.same_quota(0), vec![0, 2]);
    assert_eq!(p.same_quota(1), vec![1]);
}

#[test]
fn slots_carry_over_a_rebuild_by_key_id() {
    let p = pool(&["a", "b"], RotationStrategy::RoundRobin);
    cool(&p, 1, 50_000, None);
    let mut snap = GroupSnapshot::for_test("g", &["b", "c"]);
    snap.rotation = RotationStrategy::RoundRobin;
    let upstream = Upstream::new(&snap.upstream).unwrap();
    let q = Pool::build(snap, Some(&p), &HashMap::new(), upstream);
    assert!(Arc::ptr_eq(&p.members[1].slot, &q.members[0].slot));
    assert_eq!(q.pick(&any_model(), &[], 1_000), Pick::Key(1));
}
