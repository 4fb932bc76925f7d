//! SMTP as a [`Transport`]: one [`Session`] per connection.

use std::sync::Arc;

use edm_model::{Envelope, Failure, Reply};
use tokio_rustls::TlsConnector;

use super::session::{Afterwards, Session, SmtpSettings};
use crate::transport::{BoxFuture, Connection, Transport};

/// The SMTP relay of [`SmtpSettings`].
pub struct SmtpTransport {
    settings: Arc<SmtpSettings>,
    tls: TlsConnector,
}

impl SmtpTransport {
    /// A transport to the relay, with mail-send's TLS connector (platform
    /// verifier, ring provider).
    pub fn new(settings: SmtpSettings) -> Result<SmtpTransport, String> {
        let tls = mail_send::smtp::tls::build_tls_connector(settings.accept_invalid_certs)?;
        Ok(SmtpTransport {
            settings: Arc::new(settings),
            tls,
        })
    }
}

impl Transport for SmtpTransport {
    fn describe(&self) -> String {
        format!("{}:{}", self.settings.host, self.settings.port)
    }

    fn open(&self) -> BoxFuture<'_, Result<Box<dyn Connection>, Failure>> {
        Box::pin(async move {
            let s = Session::connect(self.settings.clone(), &self.tls).await?;
            Ok(Box::new(s) as Box<dyn Connection>)
        })
    }
}

impl Connection for Session {
    fn send<'a>(
        &'a mut self,
        env: &'a Envelope,
        before_dot: BoxFuture<'a, Result<(), String>>,
    ) -> BoxFuture<'a, Result<Reply, (Failure, Afterwards)>> {
        Box::pin(Session::send_marked(self, env, before_dot))
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(self.quit())
    }
}
