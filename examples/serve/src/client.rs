//! A minimal blocking HTTP/1.1 client for the tests and scripts (one request per connection).
//! `curl` does the same from a shell.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use serde_json::Value;

/// An answer.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body, as text.
    pub body: String,
}

impl Answer {
    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// A client of one server.
#[derive(Clone, Debug)]
pub struct Client {
    /// The server.
    pub addr: SocketAddr,
    /// The admin token sent as `Authorization: Bearer`, if any.
    pub token: Option<String>,
    /// How long to wait for an answer.
    pub timeout: Duration,
}

impl Client {
    /// A client without a token, waiting up to 10 minutes.
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            token: None,
            timeout: Duration::from_secs(600),
        }
    }

    /// The same client with a token.
    pub fn with_token(&self, token: &str) -> Client {
        Client {
            token: Some(token.into()),
            ..self.clone()
        }
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> std::io::Result<Answer> {
        self.send("GET", path, None)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> std::io::Result<Answer> {
        self.send("POST", path, Some(body.to_string().as_bytes()))
    }

    /// Any request, with a raw body.
    pub fn send(&self, method: &str, path: &str, body: Option<&[u8]>) -> std::io::Result<Answer> {
        let mut s = TcpStream::connect(self.addr)?;
        s.set_read_timeout(Some(self.timeout))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n",
            self.addr
        );
        if let Some(t) = &self.token {
            head.push_str(&format!("authorization: Bearer {t}\r\n"));
        }
        let body = body.unwrap_or_default();
        if method == "POST" {
            head.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        // A server at its connection limit may answer 503 and close before reading this.
        let _ = s.write_all(head.as_bytes());
        // A server may answer (413) before reading a large body, and close.
        let _ = s.write_all(body);
        read_answer(&mut s)
    }
}

/// Reads one answer from `s` until the server closes it.
pub fn read_answer(s: &mut TcpStream) -> std::io::Result<Answer> {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_answer(&raw)
}

fn parse_answer(raw: &[u8]) -> std::io::Result<Answer> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).map_err(|_| bad("bad chunk"))?;
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    Ok(Answer { status, body })
}
