//! Conversions between the sdk's Rust types and the borrowed `#[repr(C)]`
//! views of [`abi`](super::abi): lending an [`Envelope`] as an
//! [`EnvelopeView`], copying a view back, and the same for snapshots and
//! states. Both the hub and the plugin side use these, so they agree.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;

use super::abi::{
    AdapterSnapshotView, CounterView, EnvelopeView, HeaderView, SnapshotView, StrView,
};
use crate::adapter::AdapterState;
use crate::envelope::{Envelope, MessageId, Origin, QoS};
use crate::metrics::{
    AdapterSnapshot, HistogramSnapshot, HubSnapshot, MetricsSnapshot, REJECTED_PREFIX,
};
use crate::topic::Topic;

/// Why a view could not be copied into an [`Envelope`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    /// A null view pointer.
    #[error("null envelope")]
    Null,
    /// The topic is absent, not UTF-8, or not a valid topic name.
    #[error("invalid topic: {0}")]
    Topic(String),
    /// A text field is not UTF-8.
    #[error("field `{0}` is not UTF-8")]
    Utf8(&'static str),
    /// The QoS is not 0, 1 or 2.
    #[error("invalid QoS {0}")]
    Qos(u8),
}

/// Lends `envelope` as a view; `headers` is scratch space that must outlive
/// the view.
pub fn envelope_view(envelope: &Envelope, headers: &mut Vec<HeaderView>) -> EnvelopeView {
    headers.clear();
    headers.extend(envelope.headers.iter().map(|(k, v)| HeaderView {
        key: StrView::from_str(k),
        value: StrView::from_str(v),
    }));
    let since = envelope
        .timestamp
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    EnvelopeView {
        size: std::mem::size_of::<EnvelopeView>(),
        id_hi: (envelope.id.0 >> 64) as u64,
        id_lo: envelope.id.0 as u64,
        topic: StrView::from_str(envelope.topic.as_str()),
        payload: StrView::new(&envelope.payload),
        content_type: StrView::from_opt(envelope.content_type.as_deref()),
        qos: envelope.qos as u8,
        retain: u8::from(envelope.retain),
        origin_adapter: StrView::from_str(&envelope.origin.adapter),
        origin_protocol: StrView::from_str(&envelope.origin.protocol),
        origin_peer: StrView::from_opt(envelope.origin.peer.as_deref()),
        origin_user: StrView::from_opt(envelope.origin.user.as_deref()),
        timestamp_secs: since.as_secs(),
        timestamp_nanos: since.subsec_nanos(),
        headers: if headers.is_empty() {
            std::ptr::null()
        } else {
            headers.as_ptr()
        },
        headers_len: headers.len(),
        reply_to: StrView::from_opt(envelope.reply_to.as_deref()),
        correlation: envelope
            .correlation
            .as_ref()
            .map_or(StrView::NONE, |c| StrView::new(c)),
    }
}

unsafe fn text(view: StrView, field: &'static str) -> Result<Option<&'static str>, ViewError> {
    // SAFETY: the caller guarantees the view is readable for this call; the
    // 'static lifetime never escapes `copy_envelope`, which copies.
    match unsafe { view.bytes() } {
        None => Ok(None),
        Some(b) => std::str::from_utf8(b)
            .map(Some)
            .map_err(|_| ViewError::Utf8(field)),
    }
}

/// The origin strings of the last copied envelope: a stream of envelopes
/// from one adapter shares them instead of allocating them anew.
#[derive(Debug, Default, Clone)]
pub struct OriginCache {
    adapter: Option<Arc<str>>,
    protocol: Option<Arc<str>>,
}

impl OriginCache {
    /// A cache that starts with `origin`'s adapter and protocol.
    pub fn seeded(origin: &Origin) -> Self {
        OriginCache {
            adapter: Some(origin.adapter.clone()),
            protocol: Some(origin.protocol.clone()),
        }
    }
}

fn cached(slot: &mut Option<Arc<str>>, text: &str) -> Arc<str> {
    match slot {
        Some(s) if **s == *text => s.clone(),
        _ => {
            let s: Arc<str> = Arc::from(text);
            *slot = Some(s.clone());
            s
        }
    }
}

/// Copies a view into an owned [`Envelope`], checking the topic.
///
/// # Safety
/// `view` must be null or point to a valid [`EnvelopeView`] whose pointers
/// are readable for the duration of this call.
pub unsafe fn copy_envelope(view: *const EnvelopeView) -> Result<Envelope, ViewError> {
    // SAFETY: forwarded.
    unsafe { copy_envelope_cached(view, &mut OriginCache::default()) }
}

/// As [`copy_envelope`], sharing origin strings through `cache`.
///
/// # Safety
/// As [`copy_envelope`].
pub unsafe fn copy_envelope_cached(
    view: *const EnvelopeView,
    cache: &mut OriginCache,
) -> Result<Envelope, ViewError> {
    if view.is_null() {
        return Err(ViewError::Null);
    }
    // SAFETY: non-null and valid per the caller.
    let v = unsafe { &*view };
    // SAFETY: each field is a view valid for this call.
    unsafe {
        let topic_text = text(v.topic, "topic")
            .map_err(|_| ViewError::Topic("not UTF-8".into()))?
            .ok_or_else(|| ViewError::Topic("absent".into()))?;
        let topic = Topic::new(topic_text).map_err(|e| ViewError::Topic(e.to_string()))?;
        let payload = v
            .payload
            .bytes()
            .map(Bytes::copy_from_slice)
            .unwrap_or_default();
        let qos = QoS::try_from(v.qos).map_err(|_| ViewError::Qos(v.qos))?;
        let mut headers = Vec::with_capacity(v.headers_len);
        if !v.headers.is_null() {
            for h in std::slice::from_raw_parts(v.headers, v.headers_len) {
                let k = text(h.key, "headers")?.unwrap_or_default();
                let val = text(h.value, "headers")?.unwrap_or_default();
                headers.push((k.to_owned(), val.to_owned()));
            }
        }
        let arc = |s: Option<&str>| s.map(Arc::<str>::from);
        let origin = Origin {
            adapter: cached(
                &mut cache.adapter,
                text(v.origin_adapter, "origin.adapter")?.unwrap_or_default(),
            ),
            protocol: cached(
                &mut cache.protocol,
                text(v.origin_protocol, "origin.protocol")?.unwrap_or_default(),
            ),
            peer: arc(text(v.origin_peer, "origin.peer")?),
            user: arc(text(v.origin_user, "origin.user")?),
        };
        Ok(Envelope {
            id: MessageId((u128::from(v.id_hi) << 64) | u128::from(v.id_lo)),
            topic,
            payload,
            content_type: text(v.content_type, "content_type")?.map(str::to_owned),
            qos,
            retain: v.retain != 0,
            origin,
            timestamp: UNIX_EPOCH
                + Duration::new(v.timestamp_secs, v.timestamp_nanos.min(999_999_999)),
            headers,
            reply_to: text(v.reply_to, "reply_to")?.map(str::to_owned),
            correlation: v.correlation.bytes().map(Bytes::copy_from_slice),
        })
    }
}

/// Encodes a state for the boundary.
pub fn state_to_u32(state: AdapterState) -> u32 {
    match state {
        AdapterState::Starting => 0,
        AdapterState::Up => 1,
        AdapterState::Down => 2,
        AdapterState::Failed => 3,
        AdapterState::Stopped => 4,
    }
}

/// Decodes a state; unknown values read as `Failed`.
pub fn state_from_u32(state: u32) -> AdapterState {
    match state {
        0 => AdapterState::Starting,
        1 => AdapterState::Up,
        2 => AdapterState::Down,
        4 => AdapterState::Stopped,
        _ => AdapterState::Failed,
    }
}

/// Lends a [`HubSnapshot`] as a [`SnapshotView`] to `f`.
pub fn with_snapshot_view<R>(snapshot: &HubSnapshot, f: impl FnOnce(&SnapshotView) -> R) -> R {
    // Refusals cross as named counters under REJECTED_PREFIX: the view has
    // no field of its own for them.
    let rejected_names: Vec<Vec<String>> = snapshot
        .adapters
        .iter()
        .map(|a| {
            a.metrics
                .rejected
                .iter()
                .map(|(k, _)| format!("{REJECTED_PREFIX}{k}"))
                .collect()
        })
        .collect();
    let counters: Vec<Vec<CounterView>> =
        snapshot
            .adapters
            .iter()
            .zip(&rejected_names)
            .map(|(a, rejected)| {
                a.metrics
                    .named
                    .iter()
                    .map(|(k, v)| CounterView {
                        name: StrView::from_str(k),
                        value: *v,
                    })
                    .chain(rejected.iter().zip(&a.metrics.rejected).map(|(k, (_, v))| {
                        CounterView {
                            name: StrView::from_str(k),
                            value: *v,
                        }
                    }))
                    .collect()
            })
            .collect();
    let adapters: Vec<AdapterSnapshotView> = snapshot
        .adapters
        .iter()
        .zip(&counters)
        .map(|(a, named)| AdapterSnapshotView {
            name: StrView::from_str(&a.name),
            kind: StrView::from_str(&a.kind),
            state: state_to_u32(a.state),
            reason: StrView::from_opt(a.reason.as_deref()),
            messages_in: a.metrics.messages_in,
            messages_out: a.metrics.messages_out,
            dropped: a.metrics.dropped,
            errors: a.metrics.errors,
            reconnects: a.metrics.reconnects,
            named: named.as_ptr(),
            named_len: named.len(),
        })
        .collect();
    let lat = &snapshot.routing_latency;
    let len = lat.bounds.len().min(lat.cumulative.len());
    let view = SnapshotView {
        size: std::mem::size_of::<SnapshotView>(),
        hub: StrView::from_str(&snapshot.hub),
        adapters: adapters.as_ptr(),
        adapters_len: adapters.len(),
        topics: snapshot.topics as u64,
        subscriptions: snapshot.subscriptions as u64,
        latency_bounds: lat.bounds.as_ptr(),
        latency_cumulative: lat.cumulative.as_ptr(),
        latency_len: len,
        latency_count: lat.count,
        latency_sum: lat.sum,
    };
    f(&view)
}

unsafe fn lossy(view: StrView) -> String {
    // SAFETY: forwarded to the caller.
    unsafe { view.bytes() }
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: the caller guarantees `len` readable elements.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

/// Copies a snapshot view.
///
/// # Safety
/// `view` must be null or valid, with every pointer readable, for this call.
pub unsafe fn copy_snapshot(view: *const SnapshotView) -> HubSnapshot {
    if view.is_null() {
        return HubSnapshot::default();
    }
    // SAFETY: valid per the caller.
    unsafe {
        let v = &*view;
        let adapters = slice(v.adapters, v.adapters_len)
            .iter()
            .map(|a| AdapterSnapshot {
                name: lossy(a.name),
                kind: lossy(a.kind),
                state: state_from_u32(a.state),
                reason: a.reason.bytes().map(|_| lossy(a.reason)),
                metrics: {
                    let (rejected, named) = slice(a.named, a.named_len)
                        .iter()
                        .map(|c| (lossy(c.name), c.value))
                        .partition::<Vec<_>, _>(|(k, _)| k.starts_with(REJECTED_PREFIX));
                    MetricsSnapshot {
                        messages_in: a.messages_in,
                        messages_out: a.messages_out,
                        dropped: a.dropped,
                        errors: a.errors,
                        reconnects: a.reconnects,
                        named,
                        rejected: rejected
                            .into_iter()
                            .map(|(k, v)| (k[REJECTED_PREFIX.len()..].to_owned(), v))
                            .collect(),
                        // Not carried across the plugin boundary yet.
                        denied: Vec::new(),
                    }
                },
            })
            .collect();
        HubSnapshot {
            hub: lossy(v.hub),
            adapters,
            routing_latency: HistogramSnapshot {
                bounds: slice(v.latency_bounds, v.latency_len).to_vec(),
                cumulative: slice(v.latency_cumulative, v.latency_len).to_vec(),
                count: v.latency_count,
                sum: v.latency_sum,
            },
            topics: v.topics as usize,
            subscriptions: v.subscriptions as usize,
            ..HubSnapshot::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_survives_a_round_trip_through_its_view() {
        let e = Envelope::new(Topic::new("sensors/t1").unwrap(), &b"\x00\x01hi"[..])
            .with_qos(QoS::AtLeastOnce)
            .with_retain(true)
            .with_content_type("application/octet-stream")
            .with_header("k", "v")
            .with_header("empty", "")
            .with_origin(Origin {
                adapter: "a".into(),
                protocol: "p".into(),
                peer: Some("1.2.3.4:5".into()),
                user: None,
            });
        let mut headers = Vec::new();
        let view = envelope_view(&e, &mut headers);
        let copy = unsafe { copy_envelope(&view) }.unwrap();
        assert_eq!(copy.id, e.id);
        assert_eq!(copy.topic, e.topic);
        assert_eq!(copy.payload, e.payload);
        assert_eq!(copy.content_type, e.content_type);
        assert_eq!(copy.qos, e.qos);
        assert!(copy.retain);
        assert_eq!(copy.origin, e.origin);
        assert_eq!(copy.headers, e.headers);
        assert_eq!(copy.timestamp, e.timestamp);
        assert_eq!(copy.reply_to, None);
        assert_eq!(copy.correlation, None);
    }

    #[test]
    fn cached_copies_share_origin_strings() {
        let origin = Origin {
            adapter: "a".into(),
            protocol: "p".into(),
            peer: None,
            user: None,
        };
        let e = Envelope::new(Topic::new("t").unwrap(), "x").with_origin(origin.clone());
        let mut headers = Vec::new();
        let view = envelope_view(&e, &mut headers);
        let mut cache = OriginCache::seeded(&origin);
        let copy = unsafe { copy_envelope_cached(&view, &mut cache) }.unwrap();
        assert!(Arc::ptr_eq(&copy.origin.adapter, &origin.adapter));
        let other = Envelope::new(Topic::new("t").unwrap(), "x");
        let view = envelope_view(&other, &mut headers);
        let copy = unsafe { copy_envelope_cached(&view, &mut cache) }.unwrap();
        assert_eq!(&*copy.origin.adapter, "");
    }

    #[test]
    fn empty_and_absent_values_stay_apart() {
        let mut e = Envelope::new(Topic::new("t").unwrap(), Bytes::new());
        e.correlation = Some(Bytes::new());
        e.reply_to = Some(String::new());
        let mut headers = Vec::new();
        let view = envelope_view(&e, &mut headers);
        let copy = unsafe { copy_envelope(&view) }.unwrap();
        assert_eq!(copy.correlation, Some(Bytes::new()));
        assert_eq!(copy.reply_to.as_deref(), Some(""));
        assert_eq!(copy.content_type, None);
        assert!(copy.payload.is_empty());
    }

    #[test]
    fn bad_topics_qos_and_utf8_are_refused() {
        let e = Envelope::new(Topic::new("ok").unwrap(), "x");
        let mut headers = Vec::new();
        let mut view = envelope_view(&e, &mut headers);
        view.topic = StrView::from_str("a/+/b");
        assert!(matches!(
            unsafe { copy_envelope(&view) },
            Err(ViewError::Topic(_))
        ));
        view.topic = StrView::NONE;
        assert!(matches!(
            unsafe { copy_envelope(&view) },
            Err(ViewError::Topic(_))
        ));
        view.topic = StrView::from_str("ok");
        view.qos = 9;
        assert_eq!(
            unsafe { copy_envelope(&view) }.unwrap_err(),
            ViewError::Qos(9)
        );
        view.qos = 0;
        let bad = [0xffu8, 0xfe];
        view.content_type = StrView::new(&bad);
        assert_eq!(
            unsafe { copy_envelope(&view) }.unwrap_err(),
            ViewError::Utf8("content_type")
        );
        assert_eq!(
            unsafe { copy_envelope(std::ptr::null()) }.unwrap_err(),
            ViewError::Null
        );
    }

    #[test]
    fn states_round_trip_and_unknown_reads_failed() {
        for s in [
            AdapterState::Starting,
            AdapterState::Up,
            AdapterState::Down,
            AdapterState::Failed,
            AdapterState::Stopped,
        ] {
            assert_eq!(state_from_u32(state_to_u32(s)), s);
        }
        assert_eq!(state_from_u32(77), AdapterState::Failed);
    }

    #[test]
    fn a_snapshot_survives_a_round_trip_through_its_view() {
        let snap = HubSnapshot {
            hub: "h".into(),
            adapters: vec![AdapterSnapshot {
                name: "a".into(),
                kind: "k".into(),
                state: AdapterState::Down,
                reason: Some("why".into()),
                metrics: MetricsSnapshot {
                    messages_in: 1,
                    messages_out: 2,
                    dropped: 3,
                    errors: 4,
                    reconnects: 5,
                    named: vec![("x".into(), 6)],
                    rejected: vec![("too_big".into(), 9)],
                    denied: Vec::new(),
                },
            }],
            routing_latency: HistogramSnapshot {
                bounds: vec![0.1, 1.0],
                cumulative: vec![1, 2],
                count: 2,
                sum: 0.5,
            },
            topics: 7,
            subscriptions: 8,
            ..HubSnapshot::default()
        };
        let copy = with_snapshot_view(&snap, |v| unsafe { copy_snapshot(v) });
        assert_eq!(copy.hub, "h");
        assert_eq!(copy.topics, 7);
        assert_eq!(copy.subscriptions, 8);
        assert_eq!(copy.adapters[0].reason.as_deref(), Some("why"));
        assert_eq!(copy.adapters[0].state, AdapterState::Down);
        assert_eq!(copy.adapters[0].metrics, snap.adapters[0].metrics);
        assert_eq!(copy.routing_latency.cumulative, vec![1, 2]);
    }
}
