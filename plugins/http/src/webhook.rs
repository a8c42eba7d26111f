//! Webhooks: one task per configured endpoint `POST`s every matching
//! envelope, in order, with the payload as body and the topic in
//! `X-Polyhub-Topic`.
//!
//! Each webhook's subscription takes this adapter's own clients' envelopes
//! too (`include_own`). Its queue is bounded: when full, QoS 0 envelopes are
//! dropped and counted, QoS 1 ones hold the publisher back. A QoS 1 envelope
//! whose delivery fails (connection error, timeout, `5xx`, `408`, `429`) is
//! retried with exponential backoff; after the last retry, or on any other
//! non-`2xx` answer, it is dropped and counted.

use std::sync::Arc;

use polyhub_sdk::{AdapterContext, Envelope, Subscription};
use reqwest::StatusCode;

use crate::config::Webhook;
use crate::convert::webhook_headers;

/// Delivers envelopes from `hub` to `hook` until shutdown.
pub async fn run(
    hook: Webhook,
    client: reqwest::Client,
    mut hub: Subscription,
    ctx: AdapterContext,
) {
    let shutdown = ctx.shutdown().clone();
    loop {
        let envelope = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = hub.recv() => match e {
                Some(e) => e,
                None => return,
            },
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = deliver(&hook, &client, &envelope, &ctx) => {}
        }
    }
}

/// What one attempt came to.
enum Attempt {
    Delivered,
    /// Worth trying again.
    Retry(String),
    /// Refused for good.
    Refused(String),
}

async fn attempt(hook: &Webhook, client: &reqwest::Client, envelope: &Envelope) -> Attempt {
    let result = client
        .post(hook.url.clone())
        .headers(webhook_headers(envelope))
        .body(envelope.payload.clone())
        .timeout(hook.timeout)
        .send()
        .await;
    match result {
        Ok(resp) if resp.status().is_success() => Attempt::Delivered,
        Ok(resp) => {
            let status = resp.status();
            let retryable = status.is_server_error()
                || status == StatusCode::REQUEST_TIMEOUT
                || status == StatusCode::TOO_MANY_REQUESTS;
            let why = format!("answered {status}");
            if retryable {
                Attempt::Retry(why)
            } else {
                Attempt::Refused(why)
            }
        }
        Err(e) => Attempt::Retry(e.to_string()),
    }
}

async fn deliver(
    hook: &Webhook,
    client: &reqwest::Client,
    envelope: &Arc<Envelope>,
    ctx: &AdapterContext,
) {
    let name = ctx.name();
    let tries = if envelope.qos.is_acknowledged() {
        hook.retries.saturating_add(1)
    } else {
        1
    };
    let mut backoff = hook.backoff.clone();
    for n in 1..=tries {
        match attempt(hook, client, envelope).await {
            Attempt::Delivered => return,
            Attempt::Refused(why) => {
                ctx.metrics().record_error();
                ctx.metrics().record_drop();
                tracing::warn!(adapter = %name, url = %hook.url, topic = %envelope.topic, error = %why, "Webhook refused the envelope; dropped it.");
                return;
            }
            Attempt::Retry(why) => {
                ctx.metrics().record_error();
                if n == tries {
                    ctx.metrics().record_drop();
                    tracing::warn!(adapter = %name, url = %hook.url, topic = %envelope.topic, attempts = n, error = %why, "Webhook delivery failed; dropped the envelope.");
                    return;
                }
                ctx.metrics().incr("webhook_retries");
                let delay = backoff.next_delay();
                tracing::debug!(adapter = %name, url = %hook.url, attempt = n, retry_in = ?delay, error = %why, "Webhook delivery failed; retrying.");
                tokio::select! {
                    _ = ctx.shutdown().cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
