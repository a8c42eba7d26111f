//! Explicit `[[routes]]`: every envelope matching `from` is republished on the
//! topic `to`, where `{N}` stands for the level(s) the Nth wildcard of `from`
//! matched.
//!
//! Routes run as one internal subscriber named `routes`; since the router
//! never hands an envelope back to the adapter it came from, a rewritten
//! envelope is never routed again, so routes cannot loop.

use std::fmt;

use polyhub_sdk::{AdapterContext, Envelope, Topic, TopicFilter};

/// One piece of a `to` template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// 0-based index into the wildcard captures.
    Capture(usize),
}

/// A parsed `[[routes]]` entry.
#[derive(Debug, Clone)]
pub struct Route {
    /// The filter envelopes must match.
    pub from: TopicFilter,
    to: Vec<Part>,
    to_text: String,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.from, self.to_text)
    }
}

impl Route {
    /// Parses a route, checking that every `{N}` names a wildcard of `from`
    /// and that the template has no wildcard of its own.
    pub fn new(from: &str, to: &str) -> Result<Route, String> {
        let from = TopicFilter::new(from).map_err(|e| format!("`from`: {e}"))?;
        let wildcards = from.levels().filter(|l| *l == "+" || *l == "#").count();
        let mut parts = Vec::new();
        let mut rest = to;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("`to`: unclosed `{{` in `{to}`"))?
                + open;
            let n: usize = rest[open + 1..close].parse().map_err(|_| {
                format!(
                    "`to`: `{}` is not a wildcard reference; use {{1}}..{{{wildcards}}}",
                    &rest[open..=close]
                )
            })?;
            if n == 0 || n > wildcards {
                return Err(format!(
                    "`to`: {{{n}}} refers to wildcard {n}, but `from` = `{from}` has {wildcards} wildcard(s)"
                ));
            }
            parts.push(Part::Capture(n - 1));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        let literal_text: String = parts
            .iter()
            .filter_map(|p| match p {
                Part::Literal(s) => Some(s.as_str()),
                Part::Capture(_) => None,
            })
            .collect();
        if literal_text.contains(['+', '#']) || literal_text.contains('\0') {
            return Err(format!(
                "`to`: `{to}` must be a topic name, without `+`, `#` or NUL"
            ));
        }
        if parts.is_empty() {
            return Err("`to` is empty".to_owned());
        }
        Ok(Route {
            from,
            to: parts,
            to_text: to.to_owned(),
        })
    }

    /// The rewritten topic for `topic`, or `None` when it does not match `from`
    /// or the result is not a valid topic (e.g. empty).
    pub fn rewrite(&self, topic: &Topic) -> Option<Topic> {
        let caps = self.from.captures(topic)?;
        let mut out = String::with_capacity(self.to_text.len() + topic.as_str().len());
        for part in &self.to {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Capture(i) => out.push_str(caps.get(*i)?),
            }
        }
        Topic::try_from(out).ok()
    }
}

/// Subscribes to every route's `from` at once (so no envelope published
/// after this returns is missed) and returns the task that republishes
/// rewritten envelopes until shutdown.
pub fn start(
    routes: Vec<Route>,
    ctx: AdapterContext,
) -> Result<impl std::future::Future<Output = ()>, polyhub_sdk::SubscribeError> {
    let filters: Vec<TopicFilter> = routes.iter().map(|r| r.from.clone()).collect();
    let sub = ctx.subscribe(filters)?;
    Ok(run(routes, ctx, sub))
}

async fn run(routes: Vec<Route>, ctx: AdapterContext, mut sub: polyhub_sdk::Subscription) {
    loop {
        let envelope = tokio::select! {
            _ = ctx.shutdown().cancelled() => break,
            e = sub.recv() => match e { Some(e) => e, None => break },
        };
        for route in &routes {
            let Some(topic) = route.rewrite(&envelope.topic) else {
                continue;
            };
            let mut out: Envelope = (*envelope).clone();
            out.topic = topic;
            out.origin.peer = Some(envelope.origin.adapter.clone());
            tracing::trace!(route = %route, from = %envelope.topic, to = %out.topic, "Routed.");
            if ctx.publish(out).await.is_err() {
                return;
            }
        }
    }
    ctx.set_state(polyhub_sdk::AdapterState::Stopped, None);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    #[test]
    fn rewrite_substitutes_wildcard_levels() {
        let r = Route::new("sensors/+/temp", "telemetry/{1}/temperature").unwrap();
        assert_eq!(
            r.rewrite(&t("sensors/kitchen/temp")),
            Some(t("telemetry/kitchen/temperature"))
        );
        assert_eq!(r.rewrite(&t("sensors/kitchen/hum")), None);

        let r = Route::new("a/+/b/#", "x/{2}/{1}").unwrap();
        assert_eq!(r.rewrite(&t("a/1/b/c/d")), Some(t("x/c/d/1")));
        // `#` matched nothing: the capture is empty, which still makes a topic.
        assert_eq!(r.rewrite(&t("a/1/b")), Some(t("x//1")));
    }

    #[test]
    fn rewrite_without_wildcards_is_a_rename() {
        let r = Route::new("a/b", "c/d").unwrap();
        assert_eq!(r.rewrite(&t("a/b")), Some(t("c/d")));
    }

    #[test]
    fn bad_templates_are_explained() {
        let e = Route::new("a/+", "b/{2}").unwrap_err();
        assert!(e.contains("has 1 wildcard"), "{e}");
        assert!(Route::new("a/+", "b/{x}")
            .unwrap_err()
            .contains("not a wildcard reference"));
        assert!(Route::new("a/+", "b/{1").unwrap_err().contains("unclosed"));
        assert!(Route::new("a/+", "b/#").unwrap_err().contains("topic name"));
        assert!(Route::new("a/b+", "b").unwrap_err().contains("`from`"));
    }
}
