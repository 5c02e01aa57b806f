//! The admin listener, apart from the client port: `/healthz`, `/readyz` with every group's
//! details, `/metrics`, and the status view (`/status`, a page; `/status.json`, its data).
//! Group names, key ids and states are for operators, not for every client that can reach the
//! proxy, so the client port answers only minimal probes (see `app`).
//!
//! The status view needs the admin token when the listener is not on loopback (and whenever a
//! token is configured): `Authorization: Bearer TOKEN`, or `?token=TOKEN` for a browser.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};
use keystore::{KeyStore, Secret, TokenDigest};

use crate::shared::App;
use crate::status::{self, StoreView};

/// What the admin handlers need.
pub struct Admin {
    pub app: Arc<App>,
    pub store: Arc<dyn KeyStore>,
    pub proxy_id: String,
    /// The status view's token, as a digest (compared in constant time by its hash).
    token: Option<TokenDigest>,
    /// Whether the status view may be shown without a token (loopback and none configured).
    open: bool,
}

impl Admin {
    pub fn new(proxy: &crate::server::Proxy, listen: SocketAddr, token: Option<&Secret>) -> Self {
        Self {
            app: proxy.app.clone(),
            store: proxy.ctx.store.clone(),
            proxy_id: proxy.ctx.proxy_id.clone(),
            token: token.map(|t| TokenDigest::of(t.expose())),
            open: token.is_none() && listen.ip().is_loopback(),
        }
    }

    /// The answer refusing `req` the status view, or `None` when it may see it.
    fn refusal(&self, req: &Request) -> Option<Response> {
        if self.open {
            return None;
        }
        let Some(want) = &self.token else {
            return Some((
                StatusCode::FORBIDDEN,
                "the status view on a non-loopback admin listener needs a token: set admin.token (GEMINI_PROXY_ADMIN_TOKEN)\n",
            )
                .into_response());
        };
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let query = req.uri().query().and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
        });
        let given = bearer.map(str::to_owned).or(query);
        match given {
            Some(t) if &TokenDigest::of(&t) == want => None,
            _ => Some(
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
                    "the status view needs the admin token (Authorization: Bearer, or ?token=)\n",
                )
                    .into_response(),
            ),
        }
    }
}

/// The admin router. No port is bound here: tests drive it with `oneshot`.
pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(page))
        .route("/status.json", get(json))
        .with_state(admin)
}

/// Readiness with details: every group and its usable keys, and the store.
async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    let app = &admin.app;
    let groups = app.registry.groups();
    let mut usable_groups = 0;
    let mut lines = Vec::new();
    for pool in groups.pools() {
        let usable = pool
            .members
            .iter()
            .filter(|m| !m.disabled && !m.slot.is_retired())
            .count();
        if usable > 0 {
            usable_groups += 1;
        }
        lines.push(format!(
            "group {}: {usable} of {} keys usable",
            pool.name(),
            pool.members.len()
        ));
    }
    let draining = app.draining.load(std::sync::atomic::Ordering::Relaxed);
    let head = if draining {
        "not ready: shutting down (draining)".to_owned()
    } else if !groups.loaded {
        "not ready: no group snapshot loaded yet".to_owned()
    } else if usable_groups > 0 || lines.is_empty() {
        "ready".to_owned()
    } else {
        "ready (no group has a usable key)".to_owned()
    };
    let mut body = head;
    body.push_str(&match (app.store_status.kind, app.store_status.is_up()) {
        ("memory", _) => "\nstore: memory".to_owned(),
        (kind, true) => format!("\nstore: {kind}, reachable"),
        (kind, false) => format!(
            "\nstore: {kind}, unreachable for {} s (serving the last snapshot with local state)",
            keystore::clock::now_ms().saturating_sub(app.store_status.since_ms()) / 1000
        ),
    });
    for l in lines {
        body.push('\n');
        body.push_str(&l);
    }
    for r in &groups.refused {
        body.push_str(&format!(
            "\ngroup {}: refused ({}): {}",
            r.group, r.reason, r.detail
        ));
    }
    body.push('\n');
    (crate::app::readiness_code(app, &groups), body).into_response()
}

async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    let app = &admin.app;
    let text = app.metrics.render(
        &app.registry.groups(),
        app.store_status.is_up(),
        keystore::clock::now_ms(),
    );
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// The page: static HTML and script (no build chain), reading `status.json`.
async fn page(State(admin): State<Arc<Admin>>, req: Request) -> Response {
    if let Some(refused) = admin.refusal(&req) {
        return refused;
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            // Names come from tenants: the page writes them as text, and the policy allows no
            // script but its own.
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
                ),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        include_str!("admin/status.html"),
    )
        .into_response()
}

async fn json(State(admin): State<Arc<Admin>>, req: Request) -> Response {
    if let Some(refused) = admin.refusal(&req) {
        return refused;
    }
    let app = &admin.app;
    let report = status::of_proxy(
        &app.registry.groups(),
        admin.store.as_ref(),
        StoreView {
            kind: app.store_status.kind.to_owned(),
            up: app.store_status.is_up(),
        },
        &admin.proxy_id,
        keystore::clock::now_ms(),
    )
    .await;
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        axum::Json(report),
    )
        .into_response()
}

#[cfg(test)]
mod tests;
