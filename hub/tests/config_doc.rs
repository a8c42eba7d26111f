//! `docs/configuration.md` lists exactly the keys of the config structs:
//! each struct's fields are read through serde (the names its
//! `Deserialize` accepts, renames included) and compared both ways with the
//! `| \`key\` |` rows of the doc's section for that struct.
#![cfg(all(
    feature = "mqtt",
    feature = "coap",
    feature = "http",
    feature = "amqp",
    feature = "xmpp"
))]

use std::collections::{BTreeMap, BTreeSet};

use serde::de::{self, Deserialize, Visitor};

/// A deserializer that records the field names a struct asks for, then stops.
struct Probe<'a>(&'a mut Vec<&'static str>);

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.extend_from_slice(fields);
        Err(de::Error::custom("fields recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

fn fields<T: for<'de> Deserialize<'de>>() -> BTreeSet<String> {
    let mut names = Vec::new();
    let _ = T::deserialize(Probe(&mut names));
    assert!(
        !names.is_empty(),
        "{} is not a struct",
        std::any::type_name::<T>()
    );
    names.into_iter().map(str::to_owned).collect()
}

/// Section id (the backticked heading) -> the keys of its table rows.
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
    let text = std::fs::read_to_string(path).expect("docs/configuration.md");
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        if line.starts_with('#') {
            section = line
                .trim_start_matches('#')
                .trim()
                .strip_prefix('`')
                .and_then(|s| s.split('`').next())
                .map(str::to_owned);
            if let Some(s) = &section {
                out.entry(s.clone()).or_default();
            }
        } else if let (Some(s), Some(rest)) = (&section, line.strip_prefix("| `")) {
            if let Some(key) = rest.split('`').next() {
                out.entry(s.clone()).or_default().insert(key.to_owned());
            }
        }
    }
    out
}

#[test]
fn every_config_key_is_documented_and_every_documented_key_exists() {
    use polyhub::config::{AdapterEntry, AdminSection, AuthSection, HubSection, RouteEntry};
    let structs: Vec<(&str, BTreeSet<String>)> = vec![
        ("[hub]", fields::<HubSection>()),
        ("[admin]", fields::<AdminSection>()),
        ("[auth]", fields::<AuthSection>()),
        ("[[adapters]]", fields::<AdapterEntry>()),
        ("[[routes]]", fields::<RouteEntry>()),
        ("mqtt", fields::<polyhub_mqtt::MqttConfig>()),
        ("coap", fields::<polyhub_coap::config::CoapConfig>()),
        ("coap.push", fields::<polyhub_coap::config::PushTarget>()),
        ("http", fields::<polyhub_http::HttpConfig>()),
        ("http.tls", fields::<polyhub_http::TlsConfig>()),
        ("http.webhooks", fields::<polyhub_http::WebhookConfig>()),
        ("amqp", fields::<polyhub_amqp::AmqpConfig>()),
        ("xmpp", fields::<polyhub_xmpp::XmppConfig>()),
        (
            "xmpp.subscribers",
            fields::<polyhub_xmpp::config::SubscriberConfig>(),
        ),
    ];
    let doc = documented();
    let mut problems = Vec::new();
    for (section, keys) in &structs {
        let Some(listed) = doc.get(*section) else {
            problems.push(format!("no section `{section}` in docs/configuration.md"));
            continue;
        };
        for k in keys.difference(listed) {
            problems.push(format!("`{section}` key `{k}` is not documented"));
        }
        for k in listed.difference(keys) {
            problems.push(format!(
                "`{section}` documents `{k}`, which the config does not have"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md is out of date:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_probe_sees_renamed_fields() {
    let f = fields::<polyhub::config::AdapterEntry>();
    assert!(f.contains("type") && !f.contains("kind"), "{f:?}");
}
