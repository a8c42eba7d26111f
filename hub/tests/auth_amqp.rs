//! `[auth]` on the AMQP adapter, against the real RabbitMQ with pika as the
//! device: the sender of an ingested message is its `user_id` property
//! (which RabbitMQ checks against the publishing connection's user), or
//! anonymous without one; each message needs `write` on its topic. The
//! ACL gives `guest` write on one topic and anonymous clients another, so
//! the same user's message goes through on one and is dropped on the other,
//! and the same topic takes `guest`'s message and drops an anonymous one.
#![cfg(feature = "amqp")]

mod amqp_device;
mod common;

use amqp_device::*;
use common::*;
use polyhub_sdk::TopicFilter;

const ACL: &str = "\
topic write amqp/anon/ok
user guest
topic write amqp/guest/ok
";

async fn publish(exchange: &str, key: &str, prefix: &str, user_id: Option<&str>) {
    let mut args = vec![
        "publish",
        "--url",
        URL,
        "--exchange",
        exchange,
        "--key",
        key,
        "--prefix",
        prefix,
    ];
    if let Some(u) = user_id {
        args.extend(["--user-id", u]);
    }
    pika(&args).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_messages_are_checked_as_their_user_id_or_as_anonymous() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, ACL).unwrap();
    let (hub_name, ex) = (unique("hub"), unique("ex"));
    let hub = start_hub(&format!(
        "[hub]\nname = \"{hub_name}\"\n[auth]\nacl_file = \"{}\"\nallow_anonymous = true\n\
         [[adapters]]\nname = \"amqp\"\ntype = \"amqp\"\n[adapters.config]\n\
         url = \"{URL}\"\nexchange = \"{ex}\"\nbindings = [\"amqp/#\"]\nforward = []\n",
        acl.display()
    ))
    .await;
    let app = hub.attach("app", "test");
    let mut sub = app.subscribe([TopicFilter::new("#").unwrap()]).unwrap();

    // Refused: anonymous on guest's topic, guest on another topic, guest on
    // the anonymous topic (a user does not get the anonymous rules).
    publish(&ex, "amqp.guest.ok", "anon-on-guest", None).await;
    publish(&ex, "amqp.guest.other", "guest-elsewhere", Some("guest")).await;
    publish(&ex, "amqp.anon.ok", "guest-on-anon", Some("guest")).await;
    // Allowed: guest on its topic, anonymous on its topic.
    publish(&ex, "amqp.guest.ok", "guest-ok", Some("guest")).await;
    publish(&ex, "amqp.anon.ok", "anon-ok", None).await;

    // One queue, one consumer: messages come in order, so the first two the
    // hub takes are the allowed ones if the refused ones were dropped.
    let first = within("guest's message", sub.recv()).await.unwrap();
    assert_eq!(
        (first.topic.as_str(), &first.payload[..]),
        ("amqp/guest/ok", &b"guest-ok0"[..])
    );
    assert_eq!(first.origin.user.as_deref(), Some("guest"));
    let second = within("the anonymous message", sub.recv()).await.unwrap();
    assert_eq!(
        (second.topic.as_str(), &second.payload[..]),
        ("amqp/anon/ok", &b"anon-ok0"[..])
    );
    assert_eq!(second.origin.user, None);
    let denied = || {
        hub.snapshot()
            .adapters
            .iter()
            .find(|a| a.name == "amqp")
            .map(|a| a.metrics.denied("write"))
            .unwrap_or(0)
    };
    assert_eq!(denied(), 3);
    assert!(sub.try_recv().is_none());
    hub.shutdown().await.unwrap();
    cleanup(&ex, &[&format!("{hub_name}.amqp")]).await;
}

/// With anonymous access off, a message without `user_id` is dropped and
/// counted as a refused login; one with `user_id` is checked as that user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_anonymous_access_amqp_messages_need_a_user_id() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, ACL).unwrap();
    let (hub_name, ex) = (unique("hub"), unique("ex"));
    let hub = start_hub(&format!(
        "[hub]\nname = \"{hub_name}\"\n[auth]\nacl_file = \"{}\"\nallow_anonymous = false\n\
         [[adapters]]\nname = \"amqp\"\ntype = \"amqp\"\n[adapters.config]\n\
         url = \"{URL}\"\nexchange = \"{ex}\"\nbindings = [\"amqp/#\"]\nforward = []\n",
        acl.display()
    ))
    .await;
    let app = hub.attach("app", "test");
    let mut sub = app.subscribe([TopicFilter::new("#").unwrap()]).unwrap();
    publish(&ex, "amqp.anon.ok", "anon", None).await;
    publish(&ex, "amqp.guest.ok", "guest", Some("guest")).await;
    let got = within("guest's message", sub.recv()).await.unwrap();
    assert_eq!(&got.payload[..], b"guest0");
    let snap = hub.snapshot();
    let amqp = snap.adapters.iter().find(|a| a.name == "amqp").unwrap();
    assert_eq!(amqp.metrics.denied("connect"), 1);
    assert_eq!(amqp.metrics.denied("write"), 0);
    hub.shutdown().await.unwrap();
    cleanup(&ex, &[&format!("{hub_name}.amqp")]).await;
}
