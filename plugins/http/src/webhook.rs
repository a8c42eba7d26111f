//! Webhooks: one task per configured endpoint `POST`s every matching
//! envelope, in order, with the payload as body and the topic in
//! `X-Polyhub-Topic`.
//!
//! Each webhook reads its own durable queue (`webhook/{url}`, see
//! [`queue_names`]), which takes this adapter's own clients' envelopes too
//! (`include_own`) and never makes a publisher wait. An envelope is
//! acknowledged to the queue only once the receiver answered `2xx`, so that
//! with `[hub] data_dir` a QoS 1/2 envelope survives a hub restart until
//! then. A failed delivery (connection error, timeout, `5xx`, `408`, `429`,
//! or anything else that is not a `4xx`) is retried with exponential
//! backoff, in order, for as long as it takes: nothing is dropped but what
//! the queue's `max_queue_bytes` bound drops. A `4xx` other than `408` and
//! `429` refuses that one envelope for good: it is counted
//! (`webhook_refused`, `dropped`), logged, acknowledged, and the next one
//! goes. QoS 0 envelopes need no acknowledgement but are retried the same
//! way while the process lives.

use std::sync::Arc;

use polyhub_sdk::{AdapterContext, Envelope, Subscription};
use reqwest::StatusCode;

use crate::config::Webhook;
use crate::convert::webhook_headers;

/// The durable queue name of each webhook, in config order:
/// `webhook/{url}`, and `webhook/{url}#{n}` for the `n`-th (from 2) webhook
/// with the same URL. Stable across restarts as long as the config keeps
/// its webhooks' URLs (and the order of those sharing one).
pub fn queue_names(hooks: &[Webhook]) -> Vec<String> {
    let mut names = Vec::with_capacity(hooks.len());
    for (i, hook) in hooks.iter().enumerate() {
        let url = hook.url.as_str();
        let n = 1 + hooks[..i].iter().filter(|h| h.url.as_str() == url).count();
        names.push(if n == 1 {
            format!("webhook/{url}")
        } else {
            format!("webhook/{url}#{n}")
        });
    }
    names
}

/// Delivers envelopes from `hub` to `hook` until shutdown. On shutdown the
/// envelope being delivered stays unacknowledged: dropping the subscription
/// puts it back at the front of the queue (on disk with a data_dir).
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
        // Delivered, or refused for good: either way the queue may forget it.
        hub.ack(&envelope);
    }
}

/// What one attempt came to.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Delivered,
    /// Worth trying again.
    Retry(String),
    /// Refused for good.
    Refused(String),
}

/// How an answer's status counts: `2xx` delivered; a `4xx` other than `408`
/// and `429` refused; anything else (`5xx`, `408`, `429`, a `3xx` since
/// redirects are not followed) worth trying again.
fn classify(status: StatusCode) -> Attempt {
    if status.is_success() {
        return Attempt::Delivered;
    }
    let why = format!("answered {status}");
    let transient =
        status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS;
    if status.is_client_error() && !transient {
        Attempt::Refused(why)
    } else {
        Attempt::Retry(why)
    }
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
        Ok(resp) => classify(resp.status()),
        Err(e) => Attempt::Retry(e.to_string()),
    }
}

/// Tries `envelope` until the receiver takes it or refuses it for good
/// (or the adapter shuts down, which the caller's `select!` sees). After
/// `retries` failed retries it says so at WARN once, then keeps trying at
/// the backoff's longest delay.
async fn deliver(
    hook: &Webhook,
    client: &reqwest::Client,
    envelope: &Arc<Envelope>,
    ctx: &AdapterContext,
) {
    let name = ctx.name();
    let mut backoff = hook.backoff.clone();
    let mut n: u64 = 0;
    loop {
        n += 1;
        match attempt(hook, client, envelope).await {
            Attempt::Delivered => {
                if n > u64::from(hook.retries) + 1 {
                    tracing::info!(adapter = %name, url = %hook.url, attempts = n, "Webhook delivery succeeded again.");
                }
                return;
            }
            Attempt::Refused(why) => {
                ctx.metrics().record_error();
                ctx.metrics().record_drop();
                ctx.metrics().incr("webhook_refused");
                tracing::warn!(adapter = %name, url = %hook.url, topic = %envelope.topic, error = %why, "Webhook refused the envelope for good; skipped it.");
                return;
            }
            Attempt::Retry(why) => {
                ctx.metrics().record_error();
                ctx.metrics().incr("webhook_retries");
                let delay = backoff.next_delay();
                if n == u64::from(hook.retries) + 1 {
                    tracing::warn!(adapter = %name, url = %hook.url, topic = %envelope.topic, attempts = n, retry_every = ?backoff.max(), error = %why, "Webhook delivery keeps failing; still retrying (nothing is dropped but what the queue's max_queue_bytes drops).");
                } else {
                    tracing::debug!(adapter = %name, url = %hook.url, attempt = n, retry_in = ?delay, error = %why, "Webhook delivery failed; retrying.");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(url: &str) -> Webhook {
        Webhook {
            filter: polyhub_sdk::TopicFilter::new("#").unwrap(),
            url: url::Url::parse(url).unwrap(),
            retries: 5,
            backoff: polyhub_sdk::reconnect::Backoff::from_ms(100, 5000).unwrap(),
            timeout: std::time::Duration::from_secs(5),
        }
    }

    #[test]
    fn only_a_4xx_other_than_408_and_429_refuses_for_good() {
        assert_eq!(classify(StatusCode::OK), Attempt::Delivered);
        assert_eq!(classify(StatusCode::NO_CONTENT), Attempt::Delivered);
        for code in [400, 401, 403, 404, 410, 413, 422] {
            let s = StatusCode::from_u16(code).unwrap();
            assert!(matches!(classify(s), Attempt::Refused(_)), "{code}");
        }
        for code in [301, 307, 408, 429, 500, 502, 503, 504] {
            let s = StatusCode::from_u16(code).unwrap();
            assert!(matches!(classify(s), Attempt::Retry(_)), "{code}");
        }
    }

    #[test]
    fn queue_names_follow_the_url_and_tell_apart_webhooks_sharing_one() {
        let hooks = [
            hook("http://127.0.0.1:9000/a"),
            hook("http://127.0.0.1:9000/b"),
            hook("http://127.0.0.1:9000/a"),
        ];
        assert_eq!(
            queue_names(&hooks),
            [
                "webhook/http://127.0.0.1:9000/a",
                "webhook/http://127.0.0.1:9000/b",
                "webhook/http://127.0.0.1:9000/a#2",
            ]
        );
    }
}
