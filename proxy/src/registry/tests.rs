use keystore::{ClientEntry, GroupSnapshot};

use super::*;

fn team(tokens: &[&str]) -> GroupSnapshot {
    let mut g = GroupSnapshot::for_test("team", &["registry-key-1"]);
    g.access.mode = AccessMode::Token;
    g.access.clients = tokens
        .iter()
        .map(|t| ClientEntry {
            name: (*t).to_owned(),
            digest: TokenDigest::of(t),
        })
        .collect();
    g
}

fn open() -> GroupSnapshot {
    GroupSnapshot::for_test("open", &["registry-key-2"])
}

fn selection(default_group: Option<&str>, open_allowed: bool) -> Selection {
    Selection {
        default_group: default_group.map(str::to_owned),
        only: None,
        open_allowed,
        upstream_hosts: None,
    }
}

fn group_of(r: &Registry, token: Option<&str>) -> Option<String> {
    r.resolve(token).map(|c| c.pool.name().to_owned())
}

#[test]
fn unknown_tokens_go_to_the_named_default_group_and_revoked_ones_nowhere() {
    let r = Registry::new(selection(Some("open"), true));
    r.rebuild(vec![team(&["tok-1", "tok-2"]), open()], &HashMap::new());
    assert_eq!(group_of(&r, Some("tok-2")).as_deref(), Some("team"));
    assert_eq!(
        group_of(&r, Some("any-sdk-placeholder")).as_deref(),
        Some("open")
    );
    assert_eq!(group_of(&r, None).as_deref(), Some("open"));
    // tok-2 is revoked: 401 from now on, not the Open group.
    r.rebuild(vec![team(&["tok-1"]), open()], &HashMap::new());
    assert_eq!(group_of(&r, Some("tok-2")), None);
    assert_eq!(group_of(&r, Some("tok-1")).as_deref(), Some("team"));
    assert_eq!(
        group_of(&r, Some("any-sdk-placeholder")).as_deref(),
        Some("open")
    );
    // ...and stays revoked across later rebuilds, unless it is given out again.
    r.rebuild(vec![team(&["tok-1"]), open()], &HashMap::new());
    assert_eq!(group_of(&r, Some("tok-2")), None);
    r.rebuild(vec![team(&["tok-1", "tok-2"]), open()], &HashMap::new());
    assert_eq!(group_of(&r, Some("tok-2")).as_deref(), Some("team"));
    // A removed group's tokens are revoked with it.
    r.rebuild(vec![open()], &HashMap::new());
    assert_eq!(group_of(&r, Some("tok-1")), None);
}

#[test]
fn no_open_group_serves_without_being_named() {
    let r = Registry::new(selection(None, true));
    r.rebuild(vec![team(&["tok-1"]), open()], &HashMap::new());
    assert_eq!(group_of(&r, None), None, "no implicit default group");
    assert_eq!(group_of(&r, Some("junk")), None);
    assert!(
        r.groups().get("open").is_some(),
        "the Open group is still loaded"
    );
}

#[test]
fn open_groups_are_not_served_unless_allowed() {
    let r = Registry::new(selection(Some("open"), false));
    r.rebuild(vec![team(&["tok-1"]), open()], &HashMap::new());
    assert!(r.groups().get("open").is_none());
    assert_eq!(group_of(&r, None), None);
    assert_eq!(group_of(&r, Some("tok-1")).as_deref(), Some("team"));
    r.select(selection(Some("open"), true));
    r.rebuild(vec![team(&["tok-1"]), open()], &HashMap::new());
    assert_eq!(group_of(&r, None).as_deref(), Some("open"));
}

#[test]
fn groups_from_the_store_reach_only_allowed_hosts() {
    let hosts: Arc<[String]> = vec!["generativelanguage.googleapis.com".to_owned()].into();
    let r = Registry::new(Selection {
        upstream_hosts: Some(hosts.clone()),
        ..selection(Some("open"), true)
    });
    let mut evil = team(&["tok-1"]);
    evil.upstream.url = "https://collector.example".into();
    let mut google = open();
    google.upstream.url = "https://GenerativeLanguage.googleapis.com".into();
    r.rebuild(vec![evil.clone(), google.clone()], &HashMap::new());
    assert!(
        r.groups().get("team").is_none(),
        "a group pointing elsewhere"
    );
    assert!(r.groups().get("open").is_some());
    assert_eq!(group_of(&r, Some("tok-1")).as_deref(), Some("open"));
    // The config file's own groups are its author's: not limited.
    r.select(Selection {
        only: Some(["team".to_owned()].into()),
        upstream_hosts: Some(hosts),
        ..selection(None, true)
    });
    r.rebuild(vec![evil, google], &HashMap::new());
    assert!(r.groups().get("team").is_some());
}
