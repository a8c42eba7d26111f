//! Opening one authenticated client-to-server stream: TCP, STARTTLS with the
//! adapter's own trust roots (or plaintext for loopback), SASL. Resource
//! binding and everything after it is tokio-xmpp's `StanzaStream`, which
//! calls [`connect`] again (through the adapter's reconnector) whenever the
//! stream breaks.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use sasl::common::{ChannelBinding, Credentials};
use tokio::io::{AsyncBufRead, AsyncWrite, BufStream};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types::ServerName, ClientConfig};
use tokio_rustls::TlsConnector;
use tokio_xmpp::error::{AuthError, Error as TokioXmppError};
use tokio_xmpp::stanzastream::Connection;
use tokio_xmpp::xmlstream::{
    initiate_stream, PendingFeaturesRecv, ReadError, StreamHeader, Timeouts, XmppStream,
    XmppStreamElement,
};
use xmpp_parsers::{ns, starttls};

use crate::config::{Settings, TlsMode};
use crate::error::XmppError;
use crate::stanza_guard::{GuardedIo, OnRefusal};
use polyhub_sdk::AdapterContext;

/// Longest a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection attempt needs, built once per adapter.
#[derive(Clone)]
pub struct Connector {
    settings: Arc<Settings>,
    tls: Option<Arc<ClientConfig>>,
    timeouts: Timeouts,
    on_refusal: OnRefusal,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("host", &self.settings.host)
            .field("port", &self.settings.port)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Connector {
    /// Prepares the TLS configuration (reads `ca_file` and the system roots).
    /// Stanzas the guard refuses are counted and logged on `ctx`.
    pub fn new(settings: Arc<Settings>, ctx: Option<AdapterContext>) -> Result<Self, XmppError> {
        let tls = match settings.tls {
            TlsMode::None => None,
            TlsMode::Starttls => Some(Arc::new(tls_config(&settings)?)),
        };
        Ok(Connector {
            settings,
            tls,
            // A silent server is probed after 60 s and dropped 30 s later.
            timeouts: Timeouts {
                read_timeout: Duration::from_secs(60),
                response_timeout: Duration::from_secs(30),
            },
            on_refusal: Arc::new(move |why| {
                if let Some(ctx) = &ctx {
                    ctx.reject(why.reason(), None, &"XMPP stanza refused before parsing");
                }
            }),
        })
    }

    /// `host:port`, for logs.
    pub fn address(&self) -> String {
        format!("{}:{}", self.settings.host, self.settings.port)
    }

    /// Connects, secures and authenticates one stream, ready for binding.
    pub async fn connect(&self) -> Result<Connection, XmppError> {
        let addr = self.address();
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.settings.host.as_str(), self.settings.port)),
        )
        .await
        .map_err(|_| XmppError::Connect {
            addr: addr.clone(),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
        })?
        .map_err(|source| XmppError::Connect {
            addr: addr.clone(),
            source,
        })?;
        let _ = tcp.set_nodelay(true);
        let domain = self.settings.jid.domain().to_string();
        match &self.tls {
            None => {
                let pending = initiate_stream(
                    self.guarded(BufStream::new(tcp)),
                    ns::JABBER_CLIENT,
                    header(&domain),
                    self.timeouts,
                )
                .await?;
                self.login(pending, ChannelBinding::None).await
            }
            Some(tls) => {
                // Before TLS only the server speaks (no peer's stanza can
                // arrive before login): no guard on this leg.
                let pending = initiate_stream(
                    BufStream::new(tcp),
                    ns::JABBER_CLIENT,
                    header(&domain),
                    self.timeouts,
                )
                .await?;
                let (features, mut stream) = pending
                    .recv_features::<tokio_xmpp::xmlstream::FallibleStreamElement>()
                    .await
                    .map_err(TokioXmppError::from)?;
                if !features.can_starttls() {
                    return Err(XmppError::NoStarttls);
                }
                stream
                    .send(&XmppStreamElement::Starttls(starttls::Nonza::Request(
                        starttls::Request,
                    )))
                    .await?;
                wait_for_proceed(&mut stream).await?;
                let tcp = stream.into_inner().into_inner();
                let name = ServerName::try_from(domain.clone())
                    .map_err(|e| XmppError::Tls(format!("server name `{domain}`: {e}")))?;
                let tls_stream = TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| XmppError::Tls(e.to_string()))?;
                let binding = channel_binding(&tls_stream);
                let pending = initiate_stream(
                    self.guarded(BufStream::new(tls_stream)),
                    ns::JABBER_CLIENT,
                    header(&domain),
                    self.timeouts,
                )
                .await?;
                self.login(pending, binding).await
            }
        }
    }

    /// The stream every stanza is read from: see [`crate::stanza_guard`].
    fn guarded<Io>(&self, io: Io) -> GuardedIo<Io> {
        GuardedIo::new(io, self.settings.limits, self.on_refusal.clone())
    }

    /// SASL, stream restart, features: the stream is then ready for binding.
    async fn login<Io>(
        &self,
        pending: PendingFeaturesRecv<Io>,
        binding: ChannelBinding,
    ) -> Result<Connection, XmppError>
    where
        Io: AsyncBufRead + AsyncWrite + Unpin + Send + 'static,
    {
        let jid = &self.settings.jid;
        let (features, stream) = pending
            .recv_features::<tokio_xmpp::xmlstream::FallibleStreamElement>()
            .await
            .map_err(TokioXmppError::from)?;
        let user = jid.node().map(|n| n.to_string()).unwrap_or_default();
        let creds = Credentials::default()
            .with_username(user)
            .with_password(self.settings.password.clone())
            .with_channel_binding(binding);
        let stream = tokio_xmpp::client_login(stream, features.sasl_mechanisms, creds)
            .await
            .map_err(|e| match e {
                TokioXmppError::Auth(AuthError::Fail(cond)) => XmppError::Auth {
                    jid: jid.to_string(),
                    reason: format!(
                        "{cond:?}: check `password` in the adapter's config, and that the \
                         account exists on the server (Prosody: prosodyctl adduser {jid})"
                    ),
                },
                TokioXmppError::Auth(AuthError::NoMechanism) => XmppError::Auth {
                    jid: jid.to_string(),
                    reason: "no SASL mechanism in common (a plaintext server may refuse PLAIN: \
                             allow it on loopback or use STARTTLS)"
                        .to_owned(),
                },
                other => XmppError::Stream(other),
            })?;
        let domain = jid.domain().to_string();
        let pending = stream.send_header(header(&domain)).await?;
        let (features, stream): (_, XmppStream<Io>) = pending
            .recv_features()
            .await
            .map_err(TokioXmppError::from)?;
        Ok(Connection {
            stream: stream.box_stream(),
            features,
            identity: jid.clone(),
        })
    }
}

fn header(domain: &str) -> StreamHeader<'static> {
    StreamHeader {
        to: Some(Cow::Owned(domain.to_owned())),
        from: None,
        id: None,
    }
}

async fn wait_for_proceed<Io: AsyncBufRead + AsyncWrite + Unpin>(
    stream: &mut XmppStream<Io>,
) -> Result<(), XmppError> {
    loop {
        match stream
            .next()
            .await
            .map(|v| v.map(|v| v.into_read_error()).and_then(|r| r))
        {
            Some(Ok(XmppStreamElement::Starttls(starttls::Nonza::Proceed(_)))) => return Ok(()),
            Some(Ok(_)) | Some(Err(ReadError::SoftTimeout)) => {}
            Some(Err(ReadError::HardError(e))) => return Err(e.into()),
            Some(Err(ReadError::ParseError(e))) => {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e).into())
            }
            None | Some(Err(ReadError::StreamFooterReceived)) => {
                return Err(XmppError::Tls(
                    "the server closed the stream before TLS".into(),
                ))
            }
        }
    }
}

/// `tls-exporter` channel binding (RFC 9266) on TLS 1.3, as tokio-xmpp does.
fn channel_binding<S>(tls: &tokio_rustls::client::TlsStream<S>) -> ChannelBinding {
    let (_, conn) = tls.get_ref();
    if conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
        if let Ok(data) =
            conn.export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
        {
            return ChannelBinding::TlsExporter(data);
        }
    }
    ChannelBinding::None
}

/// The system's roots plus `ca_file` (the sdk's one TLS client builder).
fn tls_config(settings: &Settings) -> Result<ClientConfig, XmppError> {
    Ok(polyhub_sdk::tls::client_config(
        settings.ca_file.as_deref(),
    )?)
}
