//! What one per-device token check costs in the collector (issue 10): `Auth::check` on a
//! request with `Authorization: Bearer <token>` (SHA-256 of the token, one hash-map lookup
//! in the token cache, the expiry compare), against a cache of N tokens, single-threaded.
//! Compared with the open mode's check on the same request.
//!
//!     cargo run --release --example auth_cost [-- TOKENS [CHECKS]]

use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue, header};
use nsready::collector::auth::{self, Auth, TokenCache};
use nsready::store::TokenGrant;

fn main() {
    let mut args = std::env::args().skip(1);
    let tokens: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let checks: u32 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let mut grants = Vec::with_capacity(tokens);
    let mut texts = Vec::with_capacity(tokens);
    for _ in 0..tokens {
        let t = auth::generate().expect("random");
        grants.push(TokenGrant {
            token_hash: auth::hash(&t),
            device_id: uuid::Uuid::new_v4(),
            expires_at: Some(chrono::Utc::now() + chrono::Duration::days(90)),
        });
        texts.push(t);
    }
    let headers: Vec<HeaderMap> = texts
        .iter()
        .take(1024)
        .map(|t| {
            let mut h = HeaderMap::new();
            let v = HeaderValue::from_str(&format!("Bearer {t}")).expect("header");
            h.insert(header::AUTHORIZATION, v);
            h
        })
        .collect();
    let modes = [
        ("open", Auth::Open),
        ("token", Auth::Tokens(Arc::new(TokenCache::new(grants)))),
    ];
    for (name, a) in &modes {
        let mut ok = 0u32;
        let start = Instant::now();
        for i in 0..checks {
            let h = &headers[i as usize % headers.len()];
            ok += u32::from(a.check(h, chrono::Utc::now()).is_ok());
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(checks);
        println!(
            "{name:<6} {ns:>8.0} ns per check ({ok} of {checks} authorized, {tokens} tokens cached)"
        );
    }
}
