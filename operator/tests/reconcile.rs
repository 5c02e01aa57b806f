//! The controller's API calls against a mocked API server (tower-test): the finalizer is added
//! first (server-side apply), the store gets the group, events are published, and status is
//! patched only when it changed. Secrets come from the operator's watch cache, not from GETs.

use std::sync::Arc;
use std::time::Duration;

use gemini_proxy_operator::controller::{Context, reconcile};
use gemini_proxy_operator::crd::GeminiKeyGroup;
use gemini_proxy_operator::fixtures::{GroupFixture, secret};
use gemini_proxy_operator::metrics::Metrics;
use http::{Request, Response, StatusCode};
use keystore::{KeyId, KeyStore, MemoryStore};
use kube::client::Body;
use tower_test::mock::{self, Handle};

type ApiServer = Handle<Request<Body>, Response<Body>>;

fn context(
    store: Arc<dyn KeyStore>,
    secrets: Vec<k8s_openapi::api::core::v1::Secret>,
) -> (Arc<Context>, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    (
        Arc::new(Context::new(client, store, Arc::new(Metrics::new())).with_secrets(secrets)),
        handle,
    )
}

/// Expects the next request to be `method` on `path`; answers `status` with `body`; returns
/// the request's body.
async fn expect(
    api: &mut ApiServer,
    method: &str,
    path: &str,
    status: StatusCode,
    body: serde_json::Value,
) -> serde_json::Value {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), api.next_request())
        .await
        .unwrap_or_else(|_| panic!("no {method} {path} within 5 s"))
        .expect("the client was dropped");
    assert_eq!(req.method().as_str(), method, "{}", req.uri());
    assert_eq!(req.uri().path(), path);
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let sent = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
    sent
}

async fn no_more_requests(api: &mut ApiServer) {
    if let Ok(Some((req, _))) =
        tokio::time::timeout(Duration::from_millis(200), api.next_request()).await
    {
        panic!("unexpected request {} {}", req.method(), req.uri());
    }
}

const GROUP_PATH: &str = "/apis/gemini-proxy.io/v1alpha1/namespaces/team-a/geminikeygroups/gemini";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/team-a/events";

#[tokio::test]
async fn the_finalizer_is_added_before_anything_else() {
    let store = Arc::new(MemoryStore::new());
    let (ctx, mut api) = context(
        store.clone(),
        vec![secret("team-a", "keys", &[("k1", "fake-operator-key")])],
    );
    let g = GroupFixture::new("team-a", "gemini")
        .key("keys", "k1")
        .build();
    let mut with_finalizer = g.clone();
    with_finalizer.metadata.finalizers = Some(vec!["gemini-proxy.io/store-cleanup".into()]);
    let seen = store.clone();
    let server = tokio::spawn(async move {
        let (req, send) = api.next_request().await.expect("a request");
        assert_eq!(req.method(), "PATCH");
        assert_eq!(req.uri().path(), GROUP_PATH);
        assert!(
            req.uri()
                .query()
                .unwrap_or("")
                .contains("fieldManager=gemini-proxy-operator"),
            "server-side apply by the operator: {}",
            req.uri()
        );
        assert_eq!(
            req.headers()["content-type"],
            "application/apply-patch+yaml",
            "a patch of the finalizer alone, not a replace"
        );
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let patch: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            patch["metadata"]["finalizers"],
            serde_json::json!(["gemini-proxy.io/store-cleanup"]),
            "{patch}"
        );
        assert!(patch.get("spec").is_none(), "only the finalizer: {patch}");
        assert!(
            seen.groups().await.unwrap().is_empty(),
            "nothing is written to the store before the finalizer is in place"
        );
        send.send_response(
            Response::builder()
                .status(StatusCode::OK)
                .body(Body::from(serde_json::to_vec(&with_finalizer).unwrap()))
                .unwrap(),
        );
        // Then the group is applied: events and the status, whatever their order.
        while let Ok(Some((_, send))) =
            tokio::time::timeout(Duration::from_millis(300), api.next_request()).await
        {
            send.send_response(
                Response::builder()
                    .status(StatusCode::OK)
                    .body(Body::from(serde_json::to_vec(&with_finalizer).unwrap()))
                    .unwrap(),
            );
        }
    });
    reconcile(Arc::new(g), ctx).await.unwrap();
    server.await.unwrap();
    assert_eq!(
        store.groups().await.unwrap().len(),
        1,
        "then the group is written"
    );
}

#[tokio::test]
async fn apply_writes_the_store_publishes_events_and_patches_status_once() {
    let store = Arc::new(MemoryStore::new());
    let keys = secret("team-a", "keys", &[("k1", "fake-operator-key")]);
    let (ctx, mut api) = context(store.clone(), vec![keys.clone()]);
    let g = GroupFixture::new("team-a", "gemini")
        .key("keys", "k1")
        .key("gone", "k")
        .finalized()
        .build();
    let mut patched: GeminiKeyGroup = g.clone();
    let server = tokio::spawn(async move {
        // The store's audit trail: the key the publish added.
        let added = expect(
            &mut api,
            "POST",
            EVENTS_PATH,
            StatusCode::CREATED,
            serde_json::json!({}),
        )
        .await;
        assert_eq!(added["type"], "Normal");
        assert_eq!(added["reason"], "KeyAdded");
        let note = added["note"].as_str().unwrap();
        assert!(
            note.contains(KeyId::of("fake-operator-key").as_str()),
            "{note}"
        );
        assert!(!note.contains("fake-operator-key"), "a key in an event");
        let event = expect(
            &mut api,
            "POST",
            EVENTS_PATH,
            StatusCode::CREATED,
            serde_json::json!({}),
        )
        .await;
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], "KeysUnresolved");
        assert!(
            event["note"]
                .as_str()
                .unwrap()
                .contains("Secret \"gone\" not found")
        );
        let echo = serde_json::to_value(&patched).unwrap();
        let patch = expect(
            &mut api,
            "PATCH",
            &format!("{GROUP_PATH}/status"),
            StatusCode::OK,
            echo,
        )
        .await;
        let status = patch["status"].clone();
        assert_eq!(status["keys"]["total"], 1);
        assert_eq!(
            status["keyStatuses"][0]["id"],
            KeyId::of("fake-operator-key").as_str()
        );
        assert!(
            !patch.to_string().contains("fake-operator-key"),
            "a key in the status patch"
        );
        let resolved = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "KeysResolved")
            .unwrap()
            .clone();
        assert_eq!(resolved["status"], "False");
        patched.status = serde_json::from_value(status).ok();
        no_more_requests(&mut api).await;
        patched
    });
    reconcile(Arc::new(g), ctx.clone()).await.unwrap();
    let patched = server.await.unwrap();
    let groups = store.groups().await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].name, "team-a/gemini");
    assert_eq!(groups[0].keys[0].secret.expose(), "fake-operator-key");

    // Reconciling again with that status: the same secrets, no event, no patch, no read.
    let (ctx, mut api) = context(store.clone(), vec![keys]);
    let server = tokio::spawn(async move {
        no_more_requests(&mut api).await;
    });
    reconcile(Arc::new(patched), ctx).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn deletion_removes_the_group_from_the_store_and_the_finalizer() {
    let store = Arc::new(MemoryStore::new());
    let mut snapshot = keystore::GroupSnapshot::for_test("team-a/gemini", &["fake-k"]);
    snapshot.version = 0;
    store.publish_group(snapshot).await.unwrap();
    let (ctx, mut api) = context(store.clone(), Vec::new());
    let mut g = GroupFixture::new("team-a", "gemini")
        .key("keys", "k1")
        .finalized()
        .build();
    g.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let done = g.clone();
    let server = tokio::spawn(async move {
        let patch = expect(
            &mut api,
            "PATCH",
            GROUP_PATH,
            StatusCode::OK,
            serde_json::to_value(&done).unwrap(),
        )
        .await;
        assert!(
            patch.to_string().contains("remove") || patch.to_string().contains("finalizers"),
            "{patch}"
        );
        no_more_requests(&mut api).await;
    });
    reconcile(Arc::new(g), ctx).await.unwrap();
    server.await.unwrap();
    assert!(store.groups().await.unwrap().is_empty());
}
