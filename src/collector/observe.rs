//! The HTTP metrics layer: counts every response by matched route template and status
//! class (`nsready_http_responses_total`) and times it
//! (`nsready_http_request_duration_seconds`, head received → response ready). The route label is the template axum matched
//! (`MatchedPath`), mapped to the fixed [`Route`] set, never the raw path: a request for
//! any unknown path counts under `unmatched`, so hostile paths cannot add series.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::metrics::{Metrics, Route};

/// Middleware: runs the request, then counts its response.
pub async fn count_responses(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    let route = Route::from_template(req.extensions().get::<MatchedPath>().map(|m| m.as_str()));
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    metrics.http_duration(route, started.elapsed().as_secs_f64());
    metrics.http_response(route, resp.status().as_u16());
    resp
}
