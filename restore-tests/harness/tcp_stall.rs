//! A TCP proxy that can stop forwarding, in both directions, while keeping
//! every connection open: what a client sees when its server is stopped
//! (SIGSTOP) or a network silently drops packets. The kernel would keep
//! acknowledging, so only the client's own timeouts can tell. Used in front
//! of PostgreSQL; the fault proxy does the same for S3 at the HTTP level.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub struct TcpStall {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    stalled: Arc<AtomicBool>,
}

impl TcpStall {
    /// Starts forwarding to `upstream` (`host:port`) on a random loopback
    /// port; threads of its own, living as long as the test process.
    pub fn start(upstream: &str) -> TcpStall {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the stall proxy");
        let addr = listener.local_addr().unwrap().to_string();
        let stalled = Arc::new(AtomicBool::new(false));
        let (flag, upstream) = (stalled.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let flag = flag.clone();
                    std::thread::spawn(move || pump(from, to, &flag));
                }
            }
        });
        TcpStall { addr, stalled }
    }

    /// Stops (or resumes) forwarding: bytes read meanwhile are held.
    pub fn stall(&self, on: bool) {
        self.stalled.store(on, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, stalled: &AtomicBool) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while stalled.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}
