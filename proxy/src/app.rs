//! The client port's HTTP application: minimal probes, and everything else to the forwarder.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use tower::{Service, ServiceExt};

use crate::forward;
use crate::shared::App;

/// The router: probes, metrics, and everything else to the forwarder. No port is bound here,
/// so tests drive it with `oneshot`.
pub fn router(app: Arc<App>) -> Router {
    LOCAL_ROUTES
        .iter()
        .fold(Router::new(), |r, &(path, handler)| {
            r.route(
                path,
                match handler {
                    Local::Healthz => get(healthz),
                    Local::Readyz => get(readyz),
                    Local::OnAdmin => get(on_admin_listener),
                },
            )
        })
        .fallback(forward::handle)
        .with_state(app)
}

/// What the client port answers itself.
#[derive(Clone, Copy)]
enum Local {
    Healthz,
    Readyz,
    /// Served on the admin listener; here a local 404 that names it.
    OnAdmin,
}

/// The paths the client port serves itself: the router's routes and the entry's short cut
/// both come from this one list, so a path cannot be served by one and proxied by the other.
const LOCAL_ROUTES: [(&str, Local); 5] = [
    ("/healthz", Local::Healthz),
    ("/readyz", Local::Readyz),
    ("/metrics", Local::OnAdmin),
    ("/status", Local::OnAdmin),
    ("/status.json", Local::OnAdmin),
];

/// What the server threads run: requests to be proxied go straight to the forwarder, the
/// probes and `/metrics` through [`router`]. Matching routes, boxing a cloned route service and
/// running the extractors cost about a tenth of the proxy's own work per request; a proxied
/// request needs none of it.
#[derive(Clone)]
pub struct Entry {
    app: Arc<App>,
    router: Router,
}

pub fn service(app: Arc<App>) -> Entry {
    Entry {
        router: router(app.clone()),
        app,
    }
}

/// Paths the router serves itself (everything else is forwarded).
fn is_local(path: &str) -> bool {
    LOCAL_ROUTES.iter().any(|(p, _)| *p == path)
}

type EntryFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl Service<Request> for Entry {
    type Response = Response;
    type Error = Infallible;
    type Future = EntryFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> EntryFuture {
        if is_local(req.uri().path()) {
            return Box::pin(self.router.clone().oneshot(req));
        }
        let app = self.app.clone();
        // Draining: the client's next request opens a connection elsewhere. (HTTP/2 has no
        // Connection header; its connections end by GOAWAY at the stop.)
        let close = req.version() < http::Version::HTTP_2
            && app.draining.load(std::sync::atomic::Ordering::Relaxed);
        Box::pin(async move {
            let mut res = forward::handle(State(app), req).await;
            if close {
                res.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok(res)
        })
    }
}

/// Liveness: the process serves HTTP.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness on the client port: the answer only, no details (those are on the admin
/// listener, with group names and key counts).
async fn readyz(State(app): State<Arc<App>>) -> Response {
    let groups = app.registry.groups();
    let code = readiness_code(&app, &groups);
    let body = if code == StatusCode::OK {
        "ready\n"
    } else {
        "not ready\n"
    };
    (code, body).into_response()
}

/// Ready means "can answer": the groups are loaded (from the store or the config file). A group
/// without usable keys is the group's state, shown on the admin listener, in metrics and in the
/// GeminiKeyGroup status; taking every pod out of the Service for it would turn the clients'
/// 429/503 answers (in their SDK's envelope) into refused connections, and would keep
/// `helm install --wait` hanging until the first group exists.
/// A draining proxy (after SIGTERM) is not ready either.
pub fn readiness_code(app: &App, groups: &crate::registry::Groups) -> StatusCode {
    if groups.loaded && !app.draining.load(std::sync::atomic::Ordering::Relaxed) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Metrics and the status view are on the admin listener; here they are not found (and never
/// forwarded upstream).
async fn on_admin_listener() -> Response {
    (
        StatusCode::NOT_FOUND,
        "served on the admin listener (admin.listen, 127.0.0.1:9464 by default)\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests;
