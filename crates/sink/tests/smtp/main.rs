//! The sink on real loopback TCP, driven by a raw SMTP client.
//!
//! - `transaction`: a full transaction to memory and to a Maildir.
//! - `protocol`: pipelining, sequencing errors, SIZE, AUTH, idle timeout, shutdown.
//! - `rules`: each kind of scripted fault.
//! - `smtputf8`: SMTPUTF8 offered and honoured, or off and 8-bit refused.

mod protocol;
mod rules;
mod smtputf8;
mod transaction;

use std::time::{Duration, Instant};

use edm_sink::{Rule, SinkConfig, SinkHandle, Storage};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Upper bound on any wait for the server, so a bug fails instead of hanging.
const WAIT: Duration = Duration::from_secs(5);

struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    /// Connects and returns the client with the greeting.
    async fn connect(sink: &SinkHandle) -> (Client, String) {
        let stream = TcpStream::connect(sink.local_addr()).await.unwrap();
        // Split writes would otherwise wait on delayed ACKs (~40 ms each).
        stream.set_nodelay(true).unwrap();
        let mut client = Client {
            stream: BufReader::new(stream),
        };
        let greeting = client.reply().await;
        (client, greeting)
    }

    /// Connects, checks the 220 and says EHLO.
    async fn ready(sink: &SinkHandle) -> Client {
        let (mut client, greeting) = Client::connect(sink).await;
        assert!(greeting.starts_with("220 "), "{greeting}");
        let ehlo = client.cmd("EHLO client.test").await;
        assert!(ehlo.starts_with("250-"), "{ehlo}");
        client
    }

    async fn send(&mut self, raw: &str) {
        self.stream
            .get_mut()
            .write_all(raw.as_bytes())
            .await
            .unwrap();
    }

    /// One whole reply, continuation lines joined with `\n`, CRLFs removed.
    async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(WAIT, self.stream.read_line(&mut line))
                .await
                .expect("reply within 5 s")
                .unwrap();
            assert!(
                n > 0,
                "connection closed while waiting for a reply: {lines:?}"
            );
            let line = line.trim_end_matches(['\r', '\n']).to_owned();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n")).await;
        self.reply().await
    }

    /// Whether the server closed the connection (EOF) with nothing more to say.
    async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        let n = tokio::time::timeout(WAIT, self.stream.read_to_end(&mut rest))
            .await
            .expect("close within 5 s")
            .unwrap_or(0);
        assert!(
            rest.is_empty(),
            "unexpected: {:?}",
            String::from_utf8_lossy(&rest)
        );
        n == 0
    }

    /// MAIL, RCPTs and DATA, each expected to succeed, then `body` and the
    /// final dot; returns the final reply.
    async fn transaction(&mut self, from: &str, rcpts: &[&str], body: &str) -> String {
        assert_eq!(
            self.cmd(&format!("MAIL FROM:<{from}>")).await,
            "250 2.1.0 Ok"
        );
        for rcpt in rcpts {
            assert_eq!(self.cmd(&format!("RCPT TO:<{rcpt}>")).await, "250 2.1.5 Ok");
        }
        assert!(self.cmd("DATA").await.starts_with("354 "));
        self.send(&format!("{body}.\r\n")).await;
        self.reply().await
    }
}

async fn sink_with(rules: &[&str]) -> SinkHandle {
    edm_sink::start(SinkConfig {
        rules: rules.iter().map(|r| Rule::parse(r).unwrap()).collect(),
        ..SinkConfig::default()
    })
    .await
    .unwrap()
}

const BODY: &str = "Message-ID: <m1@edm.test>\r\nSubject: hi\r\n\r\n..leading dot\r\n..\r\nend\r\n";
const UNSTUFFED: &str =
    "Message-ID: <m1@edm.test>\r\nSubject: hi\r\n\r\n.leading dot\r\n.\r\nend\r\n";
