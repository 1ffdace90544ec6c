//! A mock OpenAI-compatible chat-completions server on 127.0.0.1 for the `describe` tests:
//! minimal HTTP/1.1 (request line, headers, a Content-Length body), one request per
//! connection, every request recorded before it is answered.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
}

impl Recorded {
    /// The user message: the filled prompt.
    pub fn prompt(&self) -> &str {
        self.body.pointer("/messages/0/content").and_then(Value::as_str).unwrap_or_default()
    }
}

type Reply = dyn Fn(&str) -> (u16, String) + Send + Sync;

pub struct MockChat {
    /// The base URL to pass as the endpoint (`http://127.0.0.1:PORT/v1`).
    pub url: String,
    recorded: Arc<Mutex<Vec<Recorded>>>,
}

impl MockChat {
    /// Serves forever; `reply` maps the prompt of each request to a status and a body.
    pub fn start(reply: impl Fn(&str) -> (u16, String) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&recorded);
        let reply: Box<Reply> = Box::new(reply);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                serve(stream, &reply, &log);
            }
        });
        Self { url, recorded }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.recorded.lock().unwrap().clone()
    }
}

fn serve(mut stream: TcpStream, reply: &Reply, log: &Mutex<Vec<Recorded>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
    let mut request_line = String::new();
    reader.read_line(&mut request_line).expect("request line");
    let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_owned();
    let (mut content_length, mut authorization) = (0, None);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        let Some((name, value)) = line.trim_end().split_once(':') else { break };
        match name.to_ascii_lowercase().as_str() {
            "content-length" => content_length = value.trim().parse().expect("a length"),
            "authorization" => authorization = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).expect("the body");
    let recorded =
        Recorded { path, authorization, body: serde_json::from_slice(&body).unwrap_or(Value::Null) };
    let (status, text) = reply(recorded.prompt());
    log.lock().unwrap().push(recorded);
    let head = format!(
        "HTTP/1.1 {status} Mock\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        text.len()
    );
    stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(text.as_bytes())).expect("the reply");
}

/// A 200 chat completion whose message is `content`.
pub fn chat_completion(content: &str) -> (u16, String) {
    let body = json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    });
    (200, body.to_string())
}
