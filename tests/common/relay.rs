//! A TCP relay between a client under test and a real server, for network
//! faults: it can throttle, black-hole (keep connections open but pass no
//! byte) and cut every connection, while the server itself keeps running.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct State {
    paused: AtomicBool,
    /// Bytes per second per direction; 0 for no limit.
    rate: AtomicU64,
    /// Bumped by `cut`; pumps of an older generation stop.
    generation: AtomicU64,
    /// Bytes relayed, both directions.
    relayed: AtomicU64,
}

/// A relay on a loopback port to `127.0.0.1:target`.
#[derive(Clone)]
pub struct Relay {
    port: u16,
    state: Arc<State>,
}

impl Relay {
    /// Starts relaying; runs until the test's runtime ends.
    pub async fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let generation = state.generation.load(Ordering::SeqCst);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = tokio::spawn(pump(cr, sw, state.clone(), generation));
                    let down = tokio::spawn(pump(sr, cw, state, generation));
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Relay { port, state }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops passing bytes; connections stay open (a black hole).
    pub fn pause(&self) {
        self.state.paused.store(true, Ordering::SeqCst);
    }

    /// Passes bytes again.
    pub fn resume(&self) {
        self.state.paused.store(false, Ordering::SeqCst);
    }

    /// Closes every open connection (new ones are still accepted).
    pub fn cut(&self) {
        self.state.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Limits each direction of each connection to `bytes_per_sec` (0: no limit).
    pub fn throttle(&self, bytes_per_sec: u64) {
        self.state.rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Bytes relayed so far, both directions.
    pub fn relayed(&self) -> u64 {
        self.state.relayed.load(Ordering::SeqCst)
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<State>,
    generation: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let alive = |state: &State| state.generation.load(Ordering::SeqCst) == generation;
    loop {
        let read = tokio::select! {
            r = from.read(&mut buf) => r,
            _ = wait_cut(&state, generation) => return,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while state.paused.load(Ordering::SeqCst) {
            if !alive(&state) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !alive(&state) {
            return;
        }
        let rate = state.rate.load(Ordering::SeqCst);
        if rate > 0 {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        state.relayed.fetch_add(n as u64, Ordering::SeqCst);
    }
}

async fn wait_cut(state: &State, generation: u64) {
    while state.generation.load(Ordering::SeqCst) == generation {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
