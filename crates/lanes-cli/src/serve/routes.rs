//! The router: every route, the JSON 404/405, and the access middleware.

use std::sync::Arc;

use axum::middleware;
use axum::routing::{get, post};
use axum::Router;

use super::access::access;
use super::app::App;
use super::embed::{openai_embeddings, tei_embed};
use super::info::{decode, health, info, method_not_allowed, metrics, models, not_found, tokenize};

/// All routes over `app`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/embed", post(tei_embed))
        .route("/", post(tei_embed))
        .route("/tokenize", post(tokenize))
        .route("/decode", post(decode))
        .route("/info", get(info))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), access))
        .with_state(app)
}
