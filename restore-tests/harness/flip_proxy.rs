//! A TCP proxy for gRPC (HTTP/2 without TLS) that flips one byte inside the
//! first large gRPC message a server sends on each connection: the payload
//! changes, the framing does not, so the client receives a well-formed
//! stream with wrong content, as a bad disk or a broken middlebox would
//! deliver.
//!
//! Server-to-client bytes are parsed as HTTP/2 frames (9-byte header), and
//! DATA payloads as gRPC messages (1 flag byte, 4-byte length, message) per
//! stream; the byte flipped is the middle of a message longer than
//! `min_message`, where an etcd snapshot message holds its data.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct FlipProxy {
    pub url: String,
    flipped: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FlipProxy {
    /// Listens on loopback and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str, min_message: usize) -> FlipProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let flipped = Arc::new(AtomicU64::new(0));
        let (up, f) = (upstream.to_string(), flipped.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (up, f) = (up.clone(), f.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&up).await {
                        let _ = relay(client, server, min_message, f).await;
                    }
                });
            }
        });
        FlipProxy { url, flipped, task }
    }

    /// How many bytes were flipped (one per connection at most).
    pub fn flipped(&self) -> u64 {
        self.flipped.load(Ordering::SeqCst)
    }
}

impl Drop for FlipProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    min_message: usize,
    flipped: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
        let _ = sw.shutdown().await;
    });
    let mut parser = Parser::new(min_message);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = sr.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if parser.process(&mut buf[..n]) {
            flipped.fetch_add(1, Ordering::SeqCst);
        }
        cw.write_all(&buf[..n]).await?;
    }
    let _ = cw.shutdown().await;
    up.abort();
    Ok(())
}

/// Where the parser is in the server's byte stream.
struct Parser {
    min_message: usize,
    done: bool,
    /// Bytes of the current frame header collected.
    header: Vec<u8>,
    /// DATA payload bytes left in the current frame, and its stream.
    payload_left: usize,
    other_left: usize,
    padding_left: usize,
    stream: u32,
    /// Per stream: gRPC prefix bytes collected, and message bytes left.
    grpc: HashMap<u32, Grpc>,
}

#[derive(Default)]
struct Grpc {
    prefix: Vec<u8>,
    left: usize,
    /// Message offset at which to flip, counted down.
    flip_at: Option<usize>,
}

impl Parser {
    fn new(min_message: usize) -> Parser {
        Parser {
            min_message,
            done: false,
            header: Vec::new(),
            payload_left: 0,
            other_left: 0,
            padding_left: 0,
            stream: 0,
            grpc: HashMap::new(),
        }
    }

    /// Parses `bytes` in place, flipping at most one; true when it did.
    fn process(&mut self, bytes: &mut [u8]) -> bool {
        let mut flipped = false;
        let mut i = 0;
        while i < bytes.len() {
            if self.other_left > 0 {
                let n = self.other_left.min(bytes.len() - i);
                self.other_left -= n;
                i += n;
                continue;
            }
            if self.payload_left > 0 {
                // DATA payload (padding, if any, is at its end).
                let data_left = self.payload_left - self.padding_left;
                if data_left == 0 {
                    let n = self.payload_left.min(bytes.len() - i);
                    self.payload_left -= n;
                    self.padding_left -= n;
                    i += n;
                    continue;
                }
                let n = data_left.min(bytes.len() - i);
                flipped |= self.grpc_bytes(&mut bytes[i..i + n]);
                self.payload_left -= n;
                i += n;
                continue;
            }
            // A frame header.
            self.header.push(bytes[i]);
            i += 1;
            if self.header.len() < 9 {
                continue;
            }
            let h = std::mem::take(&mut self.header);
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            let (kind, flags) = (h[3], h[4]);
            let stream = u32::from_be_bytes([h[5] & 0x7f, h[6], h[7], h[8]]);
            if kind == 0 && flags & 0x08 == 0 {
                self.payload_left = len;
                self.padding_left = 0;
                self.stream = stream;
            } else {
                // Other frames (and padded DATA, which etcd does not send)
                // pass untouched.
                self.other_left = len;
            }
        }
        flipped
    }

    /// gRPC bytes of the current stream; flips one when due.
    fn grpc_bytes(&mut self, data: &mut [u8]) -> bool {
        let min = self.min_message;
        let done = &mut self.done;
        let g = self.grpc.entry(self.stream).or_default();
        let mut flipped = false;
        let mut i = 0;
        while i < data.len() {
            if g.left == 0 {
                g.prefix.push(data[i]);
                i += 1;
                if g.prefix.len() == 5 {
                    let p = std::mem::take(&mut g.prefix);
                    g.left = u32::from_be_bytes([p[1], p[2], p[3], p[4]]) as usize;
                    g.flip_at = (!*done && g.left >= min).then_some(g.left / 2);
                }
                continue;
            }
            let n = g.left.min(data.len() - i);
            if let Some(at) = g.flip_at {
                if at < n {
                    data[i + at] ^= 0x01;
                    *done = true;
                    flipped = true;
                    g.flip_at = None;
                } else {
                    g.flip_at = Some(at - n);
                }
            }
            g.left -= n;
            i += n;
        }
        flipped
    }
}
